"""Interoperability: Hugging Face transformers import/export (hf.py, hf_config.py, hf_state.py), the
model card (model_card.py), pushing to the Hub (hub.py) and ONNX export (onnx.py)."""

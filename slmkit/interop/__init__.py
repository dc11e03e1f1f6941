"""Interoperability: Hugging Face transformers import/export (hf.py)."""

"""A dataset's meta.json as a short text summary (what `slm prepare` and `slm data info` print)."""

from __future__ import annotations


def _mb(n: int) -> str:
    return f"{n / 1e6:,.2f} MB"


def format_summary(meta: dict, path=None, reused: bool = False) -> str:
    """Human-readable summary of a dataset's meta.json: splits, filters, near-duplicates, tokenizer
    health, leak check and warnings."""
    lines = []
    tok = meta["tokenizer"]
    head = f"dataset {path}" if path else "dataset"
    lines.append(f"{head}{' (up to date, reused)' if reused else ''}")
    lines.append(f"  tokenizer   {tok['name']} ({tok['kind']}), vocab {tok['vocab_size']:,}, eot id {tok['eot_id']}, "
                 f"{meta['dtype']}")
    for name, split in meta["splits"].items():
        lines.append(f"  {name:<11} {split['documents']:,} documents, {split['tokens']:,} tokens, {_mb(split['bytes'])}"
                     f" ({split['bytes_per_token']} bytes/token)")
    for source in meta["sources"]:
        lines.append(f"  source      {source['spec']} [{source['role']}, weight {source['weight']}]: "
                     f"{source['train_documents']} train / {source['val_documents']} val documents, "
                     f"sha256 {str(source['sha256'])[:12]}")
    tail = meta.get("split", {}).get("tail")
    if tail:
        lines.append(f"  split       {tail['file']} is one document: validation is its last "
                     f"{tail['val_share_of_bytes']:.1%} (from byte {tail['cut_byte']:,}, at a {tail['cut_at']}), "
                     "training the rest")
    filters = meta["filters"]
    dropped = {k: v for k, v in filters.items() if isinstance(v, int) and v and k != "documents_kept"}
    lines.append(f"  filters     kept {filters['documents_kept']:,}; dropped: "
                 + (", ".join(f"{k} {v:,}" for k, v in dropped.items()) or "none"))
    near = meta["near_duplicates"]
    lines.append(f"  near-dups   {near['pairs']} pairs in {near['groups']} groups ({near['documents_in_groups']} "
                 f"documents, mode {near['mode']}, threshold {near['threshold']})")
    leak = meta["leak_check"]
    lines.append(f"  leak check  {leak['overlap_share']:.2%} of validation {leak['ngram_tokens']}-token sequences "
                 f"occur in training; near-duplicate pairs across the split: "
                 f"{leak.get('near_duplicate_pairs_across_split', 0)}")
    health = meta["health"]
    for name, split in health["splits"].items():
        lines.append(f"  health      {name}: {split['bytes_per_token']} bytes/token, "
                     f"{split['single_byte_token_share']:.1%} single-byte tokens")
    if "words" in health:
        words = health["words"]
        lines.append(f"              common words: {words['tokens_per_word']} tokens/word, "
                     f"{words['fragmented_share']:.0%} split into characters")
    for warning in meta.get("warnings", []):
        lines.append(f"warning: {warning}")
    return "\n".join(lines)

"""Sparse autoencoders: the type, the reference encode, loaders for each released format, the canonical writer."""

from qscope_data.sae.formats import detect_format, load_sae, parse_qwen_scope_name, save_canonical
from qscope_data.sae.model import PAD_ID, SparseAutoencoder, reference_encode

__all__ = [
    "PAD_ID",
    "SparseAutoencoder",
    "detect_format",
    "load_sae",
    "parse_qwen_scope_name",
    "reference_encode",
    "save_canonical",
]

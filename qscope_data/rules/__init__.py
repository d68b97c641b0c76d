"""Declarative feature-logic rules over SAE features.

parser (lark grammar → AST) · rulefile (YAML, positions for errors) · compile (AST → polars, all checks before
data) · score (the score stage) · mine (OR-rules from labels, top1-diff layers) · split (seeded doc_id splits) ·
evaluate (P/R/F1, transfer, data efficiency) · report (plots, HTML) · cases (rule unit tests).
"""

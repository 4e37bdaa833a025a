"""Evaluation metrics the paper reports that no engine component owns (BLEU for Table 7)."""

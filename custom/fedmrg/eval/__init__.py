"""Evaluation: metrics of generated reports against references (BLEU, METEOR, ROUGE-L, CIDEr,
clinical efficacy), score files, and the copy-a-normal-report floor. Functions of text only."""

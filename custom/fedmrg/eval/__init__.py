"""Evaluation: NLG metrics (pycocoevalcap), an offline CheXpert-style labeler, clinical efficacy."""

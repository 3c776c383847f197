"""Labels: the 14 CheXpert observations, the rule-based report labeler, and the diagnosis states
the model predicts for each observation."""

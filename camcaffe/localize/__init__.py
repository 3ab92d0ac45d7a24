"""Boxes from maps (the paper's threshold, the authors' dt_box), ground truth, and the evaluation metrics."""

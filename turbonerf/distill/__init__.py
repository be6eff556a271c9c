"""Distillation: students (NeLF / image students) trained on what a teacher renders."""

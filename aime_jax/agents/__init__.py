"""Learners: the phase-1 world-model learner (and, later, AIME phase 2, BC, BCO(0), experts)."""

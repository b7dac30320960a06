"""Learners: phase 1 (the world model), phase 2 (AIME, one run or many as one program), BC and
BCO(0), all on one train loop."""

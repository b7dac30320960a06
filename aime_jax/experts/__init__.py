"""The factory of the paper's datasets: SAC experts, the exploration agent, the MPPI planner and
the dataset builder. It sits above data/ and evaluate.py and uses both; nothing below imports it."""

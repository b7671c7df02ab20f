"""`dgi benchmark`: baselines and ablations of the paper trained and evaluated alike."""

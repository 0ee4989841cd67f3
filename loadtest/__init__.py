"""The proof harness: the burst tool, the Locust scenario and a no-op server for baselines."""

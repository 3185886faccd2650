"""What a job is: its spec, its states and the store that keeps them."""

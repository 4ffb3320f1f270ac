"""Use cases. These modules own the transactions: each unit of work ends in one commit."""

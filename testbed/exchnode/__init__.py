"""Testbed node services (matching engine, wallet signer), shipped inside every release."""

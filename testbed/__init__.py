"""Exchange-in-a-box: the local fleet that exchangeops.patching patches in demos and tests."""

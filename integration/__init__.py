"""Black-box HTTP scenarios for any live Nixie node."""

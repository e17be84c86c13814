"""The MoRE step protocol: expert specs, records, prompt building and output parsing."""

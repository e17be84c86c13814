"""The MoRE step protocol: expert specs, records, prompt building and output parsing; and the readers every input file
goes through (JSONL rows with their errors, images)."""

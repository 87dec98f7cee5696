"""Built-in real data sources (each harmonised to a documented column schema)."""

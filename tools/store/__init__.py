"""Storage: the workspace database and ledger, the source catalog, schemas, profiles and data sets."""

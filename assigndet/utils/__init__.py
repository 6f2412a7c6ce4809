"""Small shared utilities: distributed helpers, logging, metrics storage, drawing."""

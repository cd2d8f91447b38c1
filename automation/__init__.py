"""What Closed Loop's workers run: ingestion now; scoring, sequences and mail later."""

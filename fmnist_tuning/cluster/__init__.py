"""What lets many processes and machines share one study: storage, locks, artifacts."""

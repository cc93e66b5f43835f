"""Feature state that moves event by event: each user's recent items and the items they have seen."""

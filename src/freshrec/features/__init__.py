"""Feature state that moves event by event, advanced by one call (`state.LiveFeatures.observe`): each
user's recent items, the items they have seen, the catalogue of candidates, the recent items negatives are
drawn from; and item-side features (genres...) for models that read them."""

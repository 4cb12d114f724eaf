"""One request's way through the gateway: route (layers 1-2) → cache (layer 3) → call → record."""

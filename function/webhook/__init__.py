"""The webhook: what happens to a user's audio between Omi's POST and the notification."""

"""eVIP: predicts the next 15 minutes of EV charging load for a site."""

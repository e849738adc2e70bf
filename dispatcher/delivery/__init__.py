"""Delivery: lease due rows, send signed requests, record outcomes, schedule retries."""

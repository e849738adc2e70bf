"""Benchmarks for webhook-dispatcher. They print figures; they are not tests."""

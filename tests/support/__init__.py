"""Test helpers shared by integration tests and benchmarks (real servers, no mocks)."""

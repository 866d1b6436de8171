"""cutem's validation suite: gradient checks, physics checks, real data, benchmarks."""

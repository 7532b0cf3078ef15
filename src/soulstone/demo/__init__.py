"""The demo: a real tiny llama.cpp engine through soulstone, built once on first use."""

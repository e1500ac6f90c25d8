"""faceveil.configs"""

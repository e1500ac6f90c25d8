"""faceveil.models"""

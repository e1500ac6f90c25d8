"""faceveil.train"""

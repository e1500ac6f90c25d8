"""faceveil.evaluate"""

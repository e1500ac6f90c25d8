"""faceveil.data"""

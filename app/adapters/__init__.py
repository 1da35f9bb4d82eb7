"""app.adapters"""

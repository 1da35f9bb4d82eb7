"""app.store"""

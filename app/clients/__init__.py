"""app.clients"""

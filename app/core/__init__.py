"""app.core"""

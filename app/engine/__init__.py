"""app.engine"""

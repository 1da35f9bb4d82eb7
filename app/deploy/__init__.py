"""app.deploy"""

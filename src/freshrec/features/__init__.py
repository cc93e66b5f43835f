"""freshrec.features"""

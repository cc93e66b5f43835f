"""freshrec.preprocess"""

"""freshrec.evaluation"""

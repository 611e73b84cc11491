"""Certificates made by the tests with openssl: a CA, and leaf certificates
signed by it with the SAN names and uses asked for."""
import pathlib
import subprocess


def _run(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


class Pki:
    def __init__(self, directory, name="warren-test-ca"):
        self.dir = pathlib.Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.ca = self.dir / f"{name}.pem"
        self.ca_key = self.dir / f"{name}.key"
        _run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(self.ca_key), "-out", str(self.ca), "-days", "30", "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             cwd=self.dir)

    def leaf(self, name, dns=(), ips=()):
        """(cert, key) paths of a certificate for `name` naming `dns` and
        `ips`, good for servers and clients."""
        cert, key, csr, ext = (self.dir / f"{self.name}-{name}.{x}" for x in ("pem", "key", "csr", "ext"))
        san = ",".join([f"DNS:{d}" for d in dns] + [f"IP:{i}" for i in ips])
        ext.write_text(f"subjectAltName={san}\nextendedKeyUsage=serverAuth,clientAuth\n"
                       "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n")
        _run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key),
             "-out", str(csr), "-subj", f"/CN={name}", cwd=self.dir)
        _run("x509", "-req", "-in", str(csr), "-CA", str(self.ca), "-CAkey", str(self.ca_key), "-CAcreateserial",
             "-out", str(cert), "-days", "30", "-extfile", str(ext), cwd=self.dir)
        return cert, key

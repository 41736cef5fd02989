"""Prepares a moto server for the demo gateway: the Lambda function "demo" (it returns its event).

    python aws-demo-setup.py http://127.0.0.1:5000 [--check-signatures]

With --check-signatures (envoy-test/demo) it also creates an IAM user with an access key, turns moto's SigV4
checking on, and prints `export AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=...` for the shell to eval before
Envoy starts. Without it (docker-compose) moto accepts any key and does not check signatures.
"""
import io
import json
import sys
import urllib.request
import zipfile

import boto3


def post(url, path, body, content_type):
    request = urllib.request.Request(url + path, data=body.encode(), method="POST",
                                     headers={"content-type": content_type})
    urllib.request.urlopen(request).read()


def main():
    url = sys.argv[1]
    check_signatures = "--check-signatures" in sys.argv
    post(url, "/moto-api/config", json.dumps({"lambda": {"use_docker": False}}), "application/json")
    kw = dict(endpoint_url=url, region_name="us-east-1", aws_access_key_id="setup", aws_secret_access_key="setup")
    iam = boto3.client("iam", **kw)
    trust = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                        "Principal": {"Service": "lambda.amazonaws.com"}}]})
    role = iam.create_role(RoleName="demo", AssumeRolePolicyDocument=trust)["Role"]
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as z:
        z.writestr("index.py", "def handler(event, context):\n    return event\n")
    boto3.client("lambda", **kw).create_function(FunctionName="demo", Runtime="python3.12", Role=role["Arn"],
                                                 Handler="index.handler", Code={"ZipFile": code.getvalue()})
    if check_signatures:
        allow_all = json.dumps({"Version": "2012-10-17",
                                "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})
        iam.create_user(UserName="demo")
        iam.put_user_policy(UserName="demo", PolicyName="all", PolicyDocument=allow_all)
        key = iam.create_access_key(UserName="demo")["AccessKey"]
        post(url, "/moto-api/reset-auth", "0", "text/plain")
        print(f"export AWS_ACCESS_KEY_ID={key['AccessKeyId']} AWS_SECRET_ACCESS_KEY={key['SecretAccessKey']}")


if __name__ == "__main__":
    main()

"""The SOAP API's Delete of data-extension rows: ``POST /Service.asmx``."""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape

from fastapi import FastAPI, Request
from fastapi.responses import Response

from .gate import Gate
from .state import StubState

PARTNER_API = "http://exacttarget.com/wsdl/partnerAPI"
XSI = "http://www.w3.org/2001/XMLSchema-instance"


def soap_response(body: str, status: int = 200) -> Response:
    envelope = (
        '<?xml version="1.0" encoding="utf-8"?><soap:Envelope '
        'xmlns:soap="http://www.w3.org/2003/05/soap-envelope" '
        f'xmlns:xsi="{XSI}"><soap:Body>{body}</soap:Body></soap:Envelope>'
    )
    return Response(envelope, status_code=status, media_type="application/soap+xml; charset=utf-8")


def soap_fault(message: str, status: int) -> Response:
    return soap_response(
        "<soap:Fault><soap:Code><soap:Value>soap:Sender</soap:Value></soap:Code>"
        '<soap:Reason><soap:Text xml:lang="en">'
        f"{escape(message)}</soap:Text></soap:Reason></soap:Fault>",
        status,
    )


def register(app: FastAPI, state: StubState, gate: Gate) -> None:
    @app.post("/Service.asmx")
    async def soap(request: Request) -> Response:
        """The SOAP API's Delete of data-extension rows (the only SOAP call the pipeline makes)."""
        try:
            root = ET.fromstring(await request.body())
        except ET.ParseError:
            return soap_fault("The request is not well-formed XML.", 400)
        token = next(
            (
                e.text or ""
                for e in root.iter()
                if e.tag.endswith("}fueloauth") or e.tag == "fueloauth"
            ),
            "",
        )
        delete = next((e for e in root.iter() if e.tag == f"{{{PARTNER_API}}}DeleteRequest"), None)
        with state.lock:
            if (refused := gate(f"Bearer {token}")) is not None:
                if refused.status_code == 401:
                    return soap_fault(
                        "Security requirements are not satisfied because the security token is "
                        "missing, invalid or expired.",
                        401,
                    )
                return refused
            if delete is None:
                return soap_fault("This stub answers DeleteRequest only.", 400)
            results = []
            for ordinal, obj in enumerate(delete.findall(f"{{{PARTNER_API}}}Objects")):
                kind = obj.get(f"{{{XSI}}}type", "")
                customer_key = obj.findtext(f"{{{PARTNER_API}}}CustomerKey")
                keys = {
                    k.findtext(f"{{{PARTNER_API}}}Name"): k.findtext(f"{{{PARTNER_API}}}Value")
                    or ""
                    for k in obj.iterfind(f"{{{PARTNER_API}}}Keys/{{{PARTNER_API}}}Key")
                }
                if kind.split(":")[-1] != "DataExtensionObject" or not customer_key or not keys:
                    code, message = (
                        "Error",
                        "Objects must be DataExtensionObject with a CustomerKey and Keys",
                    )
                else:
                    code, message = state.delete_rows(customer_key, [keys])[0]
                results.append(
                    f"<Results><StatusCode>{code}</StatusCode><StatusMessage>{escape(message)}</StatusMessage>"
                    f"<OrdinalID>{ordinal}</OrdinalID></Results>"
                )
            if not results:
                return soap_fault("A DeleteRequest needs at least one Objects element.", 400)
            ok = sum(1 for r in results if "<StatusCode>OK<" in r)
            overall = "OK" if ok == len(results) else "Error" if ok == 0 else "Has Errors"
            return soap_response(
                "<DeleteResponse "
                f'xmlns="{PARTNER_API}">{"".join(results)}<RequestID>{uuid.uuid4()}</RequestID>'
                f"<OverallStatus>{overall}</OverallStatus></DeleteResponse>"
            )

"""PII recognizers: precision/recall per type on a labelled Chinese set, scrub modes, files, CLI, refusals.

The labelled set (tests/data/pii_labelled.jsonl) is written by `build_labelled` below from a fixed seed
with its own checksum code (not the library's) and kept in sync by a test; regenerate it with
    python tests/test_pii.py
"""

from __future__ import annotations

import datetime as dt
import json
import random
import re
from pathlib import Path

import pytest

from weitiao.errors import UserError
from weitiao.safety import pii, pii_data, pii_eval, pii_fake, pii_files, pii_match

DATA = Path(__file__).parent / "data" / "pii_labelled.jsonl"
MIN_CONF = 0.5  # a match counts as a prediction at confidence >= 0.5 (low-confidence ones are still scrubbed)
# (precision, recall) floors. Checksum types are held to the 0.95 / 0.98; the pattern types
# to what a regex + context can honestly promise; names (jieba POS) and addresses (free text) lower.
THRESHOLDS = {
    "id_card": (0.95, 0.98),
    "bank_card": (0.95, 0.98),
    "mobile": (0.95, 0.95),
    "email": (0.95, 0.95),
    "ip": (0.95, 0.95),
    "landline": (0.9, 0.9),
    "passport": (0.9, 0.9),
    "qq": (0.9, 0.9),
    "wechat": (0.9, 0.9),
    "plate": (0.9, 0.9),
    "name": (0.85, 0.8),
    "address": (0.85, 0.85),
}


# ----------------------------------------------------------------------------- the labelled set

W = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]
PROVS = [11, 12, 13, 14, 15, 21, 22, 23, 31, 32, 33, 34, 35, 36, 37, 41, 42, 43, 44, 45, 46, 50, 51, 52, 53, 54, 61]
PROVS += [62, 63, 64, 65]


def _check(body: str) -> str:
    return "10X98765432"[sum(int(c) * w for c, w in zip(body, W)) % 11]


def _luhn_sum(s: str) -> int:
    return sum((d * 2 - 9 if d * 2 > 9 else d * 2) if i % 2 else d for i, d in enumerate(int(c) for c in reversed(s)))


def _digits(r: random.Random, n: int) -> str:
    return "".join(str(r.randrange(10)) for _ in range(n))


def _id(r: random.Random, good: bool = True, date_ok: bool = True) -> str:
    y, m, d = r.randrange(1940, 2015), r.randrange(1, 13), r.randrange(1, 29)
    date = f"{y}{m:02d}{d:02d}" if date_ok else r.choice([f"{y}0230", f"{y}1332", f"{y}0431", f"{y}0000"])
    body = f"{r.choice(PROVS)}{r.randrange(100, 10000):04d}{date}{_digits(r, 3)}"
    c = _check(body)
    return body + (c if good else r.choice([x for x in "0123456789X" if x != c]))


def _card(r: random.Random, prefix: str, n: int, good: bool = True) -> str:
    body = prefix + _digits(r, n - len(prefix) - 1)
    ok = next(str(d) for d in range(10) if _luhn_sum(body + str(d)) % 10 == 0)
    return body + (ok if good else r.choice([d for d in "0123456789" if d != ok]))


GIVEN = list("伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚英华兰萍红建国志文斌辉鹏宇浩然轩涵欣怡雨晨嘉琪子")
SURN = list("王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘蒋蔡余杜叶程苏魏吕丁沈")
ROADS = ["人民路", "中山北路", "解放大道", "文三路", "建国路", "南京西路", "科技园南路", "长安街", "天府大道", "珠江路"]
PLACES = [("北京市", "朝阳区"), ("上海市", "浦东新区"), ("广东省深圳市", "南山区"), ("浙江省杭州市", "西湖区")]
PLACES += [
    ("四川省成都市", "武侯区"),
    ("湖北省武汉市", "洪山区"),
    ("江苏省南京市", "鼓楼区"),
    ("山东省济南市", "历下区"),
]
PLACES += [("杭州市", "滨江区"), ("广州市", "天河区"), ("西安市", "雁塔区"), ("天津市", "和平区")]


def _positive(r: random.Random, kind: str) -> tuple[str, str]:
    """(value, sentence template with {})."""
    if kind == "id_card":
        v = _id(r)
        return v, r.choice(["身份证号：{}", "我的身份证是{}，请核对", "证件号码{}。", "乘客{}已登记", "{}"])
    if kind == "mobile":
        d = r.choice("3456789") + _digits(r, 9)
        core = r.choice([f"1{d}", f"1{d[:2]} {d[2:6]} {d[6:]}", f"1{d[:2]}-{d[2:6]}-{d[6:]}"])
        v = r.choice(["", "", "+86 ", "+86", "0086 ", "+86-"]) + core
        return v, r.choice(["电话{}", "手机号：{}，", "请拨打{}联系我", "联系方式{}。", "有事打{}"])
    if kind == "bank_card":
        v = _card(r, r.choice(["62", "622202", "621700", "4", "5" + r.choice("12345")]), r.choice([16, 16, 19]))
        if r.random() < 0.3:
            v = " ".join(v[i : i + 4] for i in range(0, len(v), 4))
        return v, r.choice(["银行卡号{}", "卡号：{}，户名见附件", "请转到{}就行", "工资卡{}", "信用卡{}。"])
    if kind == "email":
        user = r.choice(["zhang.wei", "li_na88", "wangfang", "chen-jing", "hr", "xiaoming2024"]) + _digits(r, 2)
        v = user + "@" + r.choice(["qq.com", "163.com", "gmail.com", "company.com.cn", "sina.cn", "pku.edu.cn"])
        return v, r.choice(["邮箱是{}谢谢", "发到{}。", "联系{}获取资料", "简历投递：{}，注明岗位"])
    if kind == "ip":
        if r.random() < 0.7:
            v = ".".join(str(r.randrange(1, 255)) for _ in range(4))
        else:
            groups = [f"{r.randrange(65536):x}" for _ in range(8)]
            v = ":".join(groups) if r.random() < 0.5 else f"2001:db8::{groups[0]}"
        return v, r.choice(["服务器IP{}，", "登录地址来自{}", "访问日志：{} 请求失败", "内网地址是{}。"])
    if kind == "landline":
        area = r.choice(["010", "021", "020", "0755", "0571", "028"])
        v = r.choice([f"{area}-{r.randrange(2, 10)}{_digits(r, 7)}", f"({area}){r.randrange(2, 10)}{_digits(r, 7)}"])
        v += r.choice(["", "", "", f"-{r.randrange(100, 999)}"])
        return v, r.choice(["座机{}", "办公电话：{}，", "请致电{}咨询", "传真{}。"])
    if kind == "passport":
        v = r.choice([f"E{_digits(r, 8)}", f"G{_digits(r, 8)}", f"E{r.choice('ABCDEFGH')}{_digits(r, 7)}"])
        return v, r.choice(["护照号{}", "护照号码：{}，有效期十年", "他的护照是{}。", "签证页护照号{}"])
    if kind == "qq":
        v = str(r.randrange(1, 10)) + _digits(r, r.randrange(4, 10))
        return v, r.choice(["QQ号：{}", "加我qq {}，", "我的扣扣是{}。", "QQ{}有事留言", "qq号码 {}"])
    if kind == "wechat":
        head = r.choice(["zhang", "lily_", "wxid_", "Tom-", "xiaoming", "a"])
        chars = "abcdefghjkmnpqrstuvwxyz0123456789" + ("" if head == "wxid_" else "_")  # wxid_ + 14 letters/digits
        v = head + "".join(r.choice(chars) for _ in range(14 if head == "wxid_" else r.randrange(5, 10)))
        tpl = ["{}发了条消息"] if head == "wxid_" else ["微信号：{}", "加我vx {}，", "VX：{}。", "我的微信是{}，"]
        return v, r.choice(tpl)
    if kind == "plate":
        prov = r.choice("京沪粤川浙苏鲁鄂湘闽")
        letters = "ABCDEFGHJKLMNPQRSTUVWXYZ"
        tail = r.choice([_digits(r, 5), r.choice(letters) + _digits(r, 4), _digits(r, 3) + r.choice(letters) * 2])
        tail = r.choice([tail, tail, "D" + r.choice(letters + "0123456789") + _digits(r, 4), _digits(r, 5) + "D"])
        v = prov + r.choice(letters) + tail
        return v, r.choice(["车牌号{}", "一辆{}的白色轿车", "车牌：{}，违停", "{}请到出口缴费"])
    if kind == "name":
        v = r.choice(SURN) + "".join(r.choice(GIVEN) for _ in range(r.choice([1, 2, 2])))
        return v, r.choice(["{}老师好", "请{}先生到前台", "姓名：{}", "{}女士您好，", "我叫{}，", "{}同学交作业"])
    city, dist = r.choice(PLACES)
    v = f"{city}{dist}{r.choice(ROADS)}{r.randrange(1, 999)}号" + r.choice(["", "3号楼502室", "2单元", "A座1203"])
    return v, r.choice(["家住{}", "地址：{}", "寄到{}，谢谢", "公司在{}。"])


def _negative(r: random.Random) -> str:
    k = r.randrange(16)
    if k == 0:
        return f"订单号：{r.choice(['2023', '2024'])}{_digits(r, r.choice([12, 14, 15]))}已发货"
    if k == 1:
        return f"下单时间{r.choice(['2024', '2025'])}0{r.randrange(1, 10)}{r.randrange(10, 29)}{_digits(r, 6)}，请留意"
    if k == 2:
        amt = "1" + r.choice("3456789") + _digits(r, 9)
        return r.choice(
            [f"总金额{amt}元", f"¥{amt}", f"营收{amt}.50元", f"{amt[:2]},{amt[2:5]},{amt[5:8]},{amt[8:]}元"]
        )
    if k == 3:
        return r.choice(["身份证{}有误", "这个号码{}校验不过", "编号{}", "{}"]).format(_id(r, good=False))
    if k == 4:
        return r.choice(["出生证明{}", "流水{}", "{}是无效号码"]).format(_id(r, date_ok=False))
    if k == 5:
        return r.choice(["转账凭证{}", "参考号{}", "{}"]).format(_card(r, r.choice(["62", "4", "5"]), 16, good=False))
    if k == 6:
        v = ".".join(str(r.randrange(0, 30)) for _ in range(r.choice([3, 4])))
        return r.choice([f"版本{v}已发布", f"升级到v{v}", f"固件版本 {v}", f"Python {v}", f"version {v}"])
    if k == 7:
        return (
            f"ISBN {r.choice(['978-7-', '9787'])}{_digits(r, 3)}{r.choice(['-', ''])}{_digits(r, 5)}-{r.randrange(10)}"
        )
    if k == 8:
        return f"物流单号{_card(r, r.choice(['62', '4', '2', '7']), r.choice([16, 18, 19]))}"
    if k == 9:
        return f"会议时间 {r.randrange(8, 20)}:{r.randrange(10, 60)}:{r.randrange(10, 60)}，房间{r.randrange(100, 999)}"
    if k == 10:
        return f"型号G{_digits(r, 8)}的配件，货号E{_digits(r, 8)}"
    if k == 11:
        return f"QQ群{_digits(r, 9)}，学号{r.choice(['2021', '2022'])}{_digits(r, 6)}，工号{_digits(r, 5)}"
    if k == 12:
        return (
            f"坐标{r.randrange(100, 130)}.{_digits(r, 6)},{r.randrange(20, 45)}.{_digits(r, 6)}，人口{_digits(r, 10)}"
        )
    if k == 13:
        return r.choice(NEG_TEXT)
    if k == 14:
        return f"第{r.randrange(1, 99)}期彩票号码{_digits(r, 7)}，奖金{r.randrange(1, 9)}{_digits(r, 10)}元"
    return f"证券代码{r.randrange(600000, 604000)}，成交量{_digits(r, 11)}股，@{r.choice(SURN)}总 看一下"


NEG_TEXT = [
    "王者荣耀今晚更新",
    "黄金价格又涨了",
    "张家界的风景很美",
    "李子和桃子都很甜",
    "周末去人民公园散步",
    "高速公路上堵车了",
    "马上就到北京了",
    "从朝阳区出发大概一小时",
    "人民路附近有很多饭店",
    "沪深300指数上涨1.2%",
    "粤港澳大湾区发展规划",
    "京东618大促开始了",
    "谢谢大家的支持",
    "这本书讲的是江湖恩怨",
    "常见问题请看文档第3.2.1节",
    "比分是3:2:1",
    "发邮件到客服邮箱即可",
    "温度升到了37.5度",
    "杨梅的季节到了",
    "白天和黑夜一样长",
]


# Hand-written rows (not from the generator's templates), marked up as [[type|value]]. Numbers that must
# pass a checksum are written with a placeholder and completed by `_fill`: <ID:17 digits> and <CARD:body>.
HAND = [
    "您好，我是[[name|陈晓东]]，身份证<ID:44030619880512331>，麻烦帮我改一下预留手机[[mobile|13925678901]]。",
    "[[name|刘芳]]女士的快递请送到[[address|广东省广州市海珠区新港中路397号]]，电话[[mobile|186 2020 3344]]",
    "客户反馈：订单20240312000123456退款未到账，退款卡号<CARD:621483765432190>，请财务核实。",
    "退款请打到我的招行卡<CARD:622588123456789>，户名[[name|周杰]]。",
    "我的工资卡号是<CARD:621700381002345678>，帮我查下余额",
    "明天下午三点在[[address|上海市徐汇区漕溪北路88号]]开会，联系人[[name|孙丽]]，座机[[landline|021-64381234]]",
    "请把报告发到[[email|liu.yang@example.org]]和[[email|hr_team@bytedance.com]]，谢谢！",
    "异常登录IP：[[ip|223.104.63.12]]，时间2024-03-15 08:12:33，设备iPhone 15",
    "防火墙拦截了来自[[ip|fe80::1ff:fe23:4567:890a]]的请求",
    "护照号码[[passport|EA1234567]]，签发地北京，有效期至2033年",
    "[[plate|苏E·88K72]]在小区门口乱停车，物业请处理",
    "新能源车[[plate|浙AD12345]]充电桩占用超时",
    "您好，我叫[[name|黄婷婷]]，今年28岁，住在[[address|成都市武侯区天府大道北段1700号]]",
    "联系[[name|王建国]]老师：[[mobile|+8613512345678]]",
    "急！我家孩子[[name|李子轩]]走丢了，穿红色外套，有消息请打[[mobile|158-0000-1234]]",
    "开票信息：公司地址[[address|北京市海淀区中关村大街27号]]，电话[[landline|010-82561234]]",
    "病历：患者[[name|赵敏]]，身份证号<ID:32010219750823432>，主诉头痛三天",
    "转账给[[name|吴磊]]，卡号 <CARD:4392250012345678>，金额5000元",
    "家庭住址：[[address|湖南省长沙市岳麓区麓山南路932号]]",
    "如有疑问请致电[[landline|(0571)87651234]]或发邮件至[[email|service@alibaba-inc.com]]",
    # hard negatives, hand-written
    "本次共发货13812345678件商品",
    "订单编号：6228480402564890018（请勿泄露给他人）",
    "快递单号SF1234567890123，预计明天送达",
    "时间戳1710480645000对应2024年3月15日",
    "他的编号是110105194912310021，不是身份证",
    "Chrome 120.0.6099.109 已经是最新版本",
    "更新到 1.2.3.4 后问题修复",
    "张总说这周五前要交方案",
    "老王和小李一起去吃饭了",
    "ISBN 978-7-5086-2345-6，定价59元",
    "北京今天的PM2.5是135",
    "成交额达到15987654321元",
    "尾号5678的用户您好",
    "请输入6位验证码：482913",
    "这件衣服的货号是E20231108A",
    "会员卡积分1234567890123456分已过期，以实际为准",
    "文件哈希ab12:cd34:ef56",
    "他说：'欧阳修是宋代文学家'",
    "北京市朝阳区今天有雨",
    "1.1.1.1 版本已经停止维护",
    # second batch, written after the recognizers were tuned on everything above
    "用户：帮我订一张明天去广州的票，乘车人[[name|邓丽君]]，证件<ID:44010619650212002>",
    "[[name|许嵩]]的手机是[[mobile|17712345678]]吗？",
    "收件人：[[name|钱学森]] 电话：[[mobile|133-0101-8888]] 地址：[[address|陕西省西安市碑林区咸宁西路28号]]",
    "请核对持卡人[[name|马丽]]，信用卡<CARD:518012345678901>，有效期12/28",
    "报警人称其车辆[[plate|鲁B12345]]被剐蹭，报警电话[[mobile|+86 150 1234 5678]]",
    "服务器 [[ip|10.0.0.1]] 和 [[ip|10.0.0.2]] 之间延迟很高",
    "学生[[name|欧阳娜娜]]的家长邮箱：[[email|nana_parent@126.com]]",
    "寄件人[[name|何炅]]，寄件地址[[address|湖南省长沙市开福区金鹰影视文化城1号]]",
    "如需帮助请拨打客服热线[[landline|0755-86013388]]",
    "他在[[address|江苏省苏州市工业园区星湖街328号]]上班",
    "你好[[name|林志玲]]小姐，你的护照[[passport|E98765432]]已办好",
    "[[name|唐僧]]说他的IP是[[ip|192.168.0.105]]",
    "请向账户<CARD:622700123456789012>汇款，备注姓名",
    "这台机器的IPv6地址为[[ip|2408:8207:2483:7c50::1]]",
    "我叫[[name|范冰冰]]，电话[[mobile|139 1000 2000]]，有事找我",
    "车主[[name|吴京]]，车牌[[plate|京N·D8888]]",
    "座机号码是[[landline|028-85551234]]，手机号[[mobile|18980001234]]",
    "麻烦寄到[[address|重庆市渝中区解放碑八一路177号]]",
    "我的邮箱[[email|a.b-c_d@mail.tsinghua.edu.cn]]，有问题联系",
    "[[name|郭德纲]]老师的演出票已售罄",
    # second batch, hard negatives
    "本月活跃用户13900000000人次",
    "交易流水号6222021234567890128已作废",
    "错误代码0x80070005，请重启",
    "2024年3月15日12时30分45秒下单",
    "会议号 876 5432 1098，密码1234",
    "请在15天内完成，第13812345678条记录有误",
    "Windows 10.0.19045.3693 版本",
    "产品批号 G20240315，生产日期2024-03-15",
    "这个手机壳适配iPhone 13 Pro Max",
    "王先生和李女士都来了",
    "上海市场今年很火爆",
    "价格：¥13,999.00",
    "MAC地址 00:1A:2B:3C:4D:5E",
    "世界上最高的山是珠穆朗玛峰，海拔8848.86米",
    "身份证号码必须是18位，最后一位可能是X",
    "请输入您的银行卡号",
    "京津冀协同发展",
    "他住在北京，在朝阳区工作",
    "备案号：京ICP备12345678号",
    "第一百二十三号文件",
    # QQ numbers and WeChat IDs: after a cue only
    "有事加我QQ [[qq|10086123]] 或者微信 [[wechat|zhang_wei_88]]",
    "我的扣扣：[[qq|987654321]]，vx同手机号[[mobile|13912345678]]",
    "微信号是[[wechat|Lily2024]]，备注来意",
    "群里的[[wechat|wxid_k3j9d8s7a6]]一直在发广告",
    "验证码12345678五分钟内有效",
    "QQ群564738291欢迎加入",
    "打开微信支付，扫码付款",
    "用户ID 20231108，等级5",
]


def _fill(text: str) -> str:
    text = re.sub(r"<ID:(\d{17})>", lambda m: f"[[id_card|{m.group(1)}{_check(m.group(1))}]]", text)

    def card(m):
        body = m.group(1)
        ok = next(str(d) for d in range(10) if _luhn_sum(body + str(d)) % 10 == 0)
        return f"[[bank_card|{body}{ok}]]"

    return re.sub(r"<CARD:(\d+)>", card, text)


def _parse_hand(line: str) -> dict:
    """A hand-written `[[type|value]]` line → text + spans (the held-out generator's own reader)."""
    from weitiao.safety.eval.make_pii_zh import _fill_hand

    return {**_fill_hand(line), "source": "hand"}


def build_labelled(seed: int = 20261124, per_type: int = 40, negatives: int = 360) -> list[dict]:
    """Sentences with 0–2 PII spans (positives) and sentences with hard look-alikes only (negatives)."""
    r = random.Random(seed)
    rows = []
    for kind in pii.TYPES:
        for _ in range(per_type):
            value, tpl = _positive(r, kind)
            text = tpl.replace("{}", value)
            spans = [[tpl.index("{}"), tpl.index("{}") + len(value), kind]]
            if r.random() < 0.25:  # a hard negative beside the positive
                text += "，" + _negative(r)
            rows.append({"text": text, "spans": spans})
    rows += [{"text": _negative(r), "spans": []} for _ in range(negatives)]
    return rows + [_parse_hand(_fill(line)) for line in HAND]


# ----------------------------------------------------------------------------- scoring


def score(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Precision/recall per type with the library's scorer (`pii_eval`), predictions at MIN_CONF."""
    res = pii_eval.score(rows, MIN_CONF)
    return {t: {"precision": v.span_precision, "recall": v.label_recall} for t, v in res.items()}


def load_labelled() -> list[dict]:
    return pii_eval.load_labelled(DATA)


def test_labelled_set_is_in_sync_and_big_enough():
    rows = load_labelled()
    assert rows == build_labelled(), "regenerate: python tests/test_pii.py"
    assert sum(len(r["spans"]) for r in rows) >= 300
    assert sum(not r["spans"] for r in rows) >= 300
    for r in rows:
        for a, b, _ in r["spans"]:
            assert r["text"][a:b].strip() == r["text"][a:b]


def test_precision_recall_per_type():
    res = score(load_labelled())
    bad = [
        f"{t}: P={v['precision']:.3f} R={v['recall']:.3f} (need {THRESHOLDS[t]})"
        for t, v in res.items()
        if (v["precision"] < THRESHOLDS[t][0] or v["recall"] < THRESHOLDS[t][1]) and (t != "name" or pii._jieba_ok())
    ]  # without jieba, names are only found after labels: every other type is still held to its floor
    assert not bad, bad


def test_scoring_can_fail():
    """The scorer notices a recognizer that finds nothing and one that fires on every number."""
    rows = load_labelled()
    assert (
        score([{"text": r["text"], "spans": r["spans"] + [[0, 1, "id_card"]]} for r in rows[:5]])["id_card"]["recall"]
        < 1.0
    )
    saved = pii.RECOGNIZERS["bank_card"]
    pii.RECOGNIZERS["bank_card"] = lambda text: [
        pii.Match("bank_card", m.start(), m.end(), m.group(), 0.9) for m in re.finditer(r"\d{16,19}", text)
    ]
    try:
        assert score(rows)["bank_card"]["precision"] < 0.95
    finally:
        pii.RECOGNIZERS["bank_card"] = saved


def test_precision_counts_predictions_and_recall_labels(monkeypatch):
    """For addresses and names a prediction matches a label it overlaps, so one prediction can match two labels:
    precision must count predictions (1 of 2 right = 0.5), recall labels (2 of 2). It counted labels found over labels
    found + spurious predictions (2 / 3 = 0.667)."""
    text = "住址：北京市朝阳区建国路88号，另一处：无"
    labels = [[3, 9, "address"], [9, 16, "address"]]  # one address labelled in two pieces
    preds = [pii.Match("address", 3, 16, text[3:16], 0.85), pii.Match("address", 20, 21, text[20:21], 0.85)]
    monkeypatch.setattr(pii_eval.pii, "scan", lambda text, types=None, min_confidence=0.0: preds)
    res = pii_eval.score([{"text": text, "spans": labels}])["address"]
    assert (res.span_precision, res.label_recall) == (0.5, 1.0)
    assert (res.labels_found, res.labels_missed, res.predictions_on_no_label, res.predictions_on_label) == (2, 0, 1, 1)
    # two predictions inside one label: both right (precision 1.0), one label found
    preds[:] = [pii.Match("address", 3, 9, text[3:9], 0.85), pii.Match("address", 9, 16, text[9:16], 0.85)]
    res = pii_eval.score([{"text": text, "spans": [[3, 16, "address"]]}])["address"]
    assert (res.span_precision, res.label_recall, res.labels_found, res.predictions_on_label) == (1.0, 1.0, 1, 2)


# ----------------------------------------------------------------------------- the held-out set
# Reported in the README; not tuned on (see weitiao/safety/eval/make_pii_zh.py). These tests pin it.

HELD_OUT_FLOORS = {t: (0.97, 0.98) for t in pii.TYPES} | {"name": (0.90, 0.90), "address": (0.90, 0.90)}


def test_held_out_set_in_sync_with_valid_labels():
    from weitiao.safety.eval import make_pii_zh as M

    rows = pii_eval.load_labelled(pii_eval.HELD_OUT)
    assert rows == M.build(), "regenerate: python -m weitiao.safety.eval.make_pii_zh"
    assert len(rows) >= 1000 and sum(not r["spans"] for r in rows) >= 400
    assert pii_eval.HELD_OUT.stat().st_size < 100_000
    for r in rows:  # with the generator's own checksum code, not the library's
        for a, b, t in r["spans"]:
            digits = re.sub(r"[^0-9Xx]", "", r["text"][a:b].translate(pii.FULLWIDTH)).upper()
            if t == "id_card":
                assert M._check(digits[:17]) == digits[17], r
            if t == "bank_card":
                assert M._luhn(digits[:-1]) == digits[-1], r


def test_held_out_precision_recall_meets_the_targets():
    res = pii_eval.score(pii_eval.load_labelled(pii_eval.HELD_OUT))
    bad = [
        f"{t}: P={v.span_precision:.3f} R={v.label_recall:.3f} (need {HELD_OUT_FLOORS[t]})"
        for t, v in res.items()
        if (v.span_precision < HELD_OUT_FLOORS[t][0] or v.label_recall < HELD_OUT_FLOORS[t][1])
        and (t != "name" or pii._jieba_ok())
    ]
    assert not bad, bad


def test_eval_cli_prints_per_type_and_rejects_bad_labels(tmp_path):
    from typer.testing import CliRunner

    from weitiao.safety.commands import app

    good = tmp_path / "l.jsonl"
    good.write_text('{"text": "电话13812345678", "spans": [[2, 13, "mobile"]]}\n{"text": "无", "spans": []}\n')
    res = CliRunner().invoke(app, ["eval", str(good), "--json"])
    assert res.exit_code == 0, res.output
    mobile = {
        "match": "exact", "span_precision": 1.0, "label_recall": 1.0, "share_left_in_clear": 0.0, "labels_found": 1,
        "labels_missed": 0, "predictions_on_label": 1, "predictions_on_no_label": 0, "chars_labelled": 11,
        "chars_left_in_clear": 0, "chars_masked_outside_labels": 0,
    }  # fmt: skip
    assert json.loads(res.output)["mobile"] == mobile
    # a type the set has no label or prediction of has no score: it read precision 1.000, recall 1.000
    keys = ("span_precision", "label_recall", "share_left_in_clear")
    assert {k: json.loads(res.output)["bank_card"][k] for k in keys} == dict.fromkeys(keys)
    table = CliRunner().invoke(app, ["eval", str(good)]).output
    assert re.search(r"bank_card\s+exact\s+—\s+—\s+0/0\s+0\s+—\s+0", table), table
    assert re.search(r"mobile\s+exact\s+1\.000\s+1\.000\s+0/1\s+0\s+0/11\s+0", table), table
    res = CliRunner().invoke(app, ["eval"])
    assert res.exit_code == 0 and "bank_card" in res.output and "1,284 rows" in res.output
    bad = tmp_path / "b.jsonl"
    bad.write_text('{"text": "x", "spans": []}\n{"text": "电话", "spans": [[0, 9, "phone"]]}\n')
    res = CliRunner().invoke(app, ["eval", str(bad)])
    assert isinstance(res.exception, UserError) and f"{bad}:2: spans[0]" in str(res.exception)


# ----------------------------------------------------------------------------- recognizers


def test_checksums():
    assert pii.valid_id("11010519491231002X") and not pii.valid_id("110105194912310021")
    assert not pii.valid_id("110105194902300020")  # 2 月 30 日
    assert not pii.valid_id("991050194912310020")  # province 99
    assert pii.luhn_ok("6222021234567890128") and not pii.luhn_ok("6222021234567890123")
    assert pii.luhn_ok("4111111111111111") and not pii.luhn_ok("4111111111111112")


def test_boundaries_without_word_boundary():
    assert [m.text for m in pii.scan("电话13812345678谢谢")] == ["13812345678"]
    assert not pii.scan("a13812345678", ["mobile"]) and not pii.scan("138123456789", ["mobile"])
    assert [m.text for m in pii.scan("邮箱zhang@qq.com谢谢", ["email"])] == ["zhang@qq.com"]
    assert [m.text for m in pii.scan("手机：138 1234 5678。", ["mobile"])] == ["138 1234 5678"]
    assert [m.text for m in pii.scan("拨0086 13812345678", ["mobile"])] == ["0086 13812345678"]


def _found(text, types=None):
    return [(m.type, m.text) for m in pii.scan(text, types)]


def test_ip_after_an_english_word_and_versions_after_a_product():
    """A lowercase word before an address is prose ("server is", "and"); a capitalized one is a product with its
    version; "ver" inside "server" is no version cue."""
    ips = _found("my server is 10.0.0.5 and backup is 8.8.4.4, gateway and 2001:db8::1", ["ip"])
    assert [t for _, t in ips] == ["10.0.0.5", "8.8.4.4", "2001:db8::1"]
    for version in (
        "Chrome 10.0.1.2",
        "Python 3.9.12.21",
        "iOS 17.0.1.1",
        "version 1.2.3.4",
        "ver 1.2.3.4",
        "v1.2.3.4",
    ):
        assert not _found(version, ["ip"]), version


def test_fullwidth_and_spoken_digits():
    assert _found("手机１３８１２３４５６７８，谢谢") == [("mobile", "１３８１２３４５６７８")]
    assert _found("电话一三八一二三四五六七八") == [("mobile", "一三八一二三四五六七八")]
    assert _found("打幺三九 两四六八 洞五七九找我") == [("mobile", "幺三九 两四六八 洞五七九")]
    assert _found("邮箱ｚｈａｎｇ＠ｑｑ．ｃｏｍ") == [("email", "ｚｈａｎｇ＠ｑｑ．ｃｏｍ")]
    assert _found("座机（０１０）８２５６１２３４", ["landline"]) == [("landline", "（０１０）８２５６１２３４")]
    # controls: counting in words, short numerals, and a full-width colon before an IPv6 address
    assert _found("一二三四五六七八九十，第一二三名，三五个人") == []
    v6 = "67c:c56c:93b8:83e9:3d59:6af0:a70f:5752"
    assert _found(f"访问日志：{v6} 请求失败", ["ip"]) == [("ip", v6)]


def test_numbers_in_any_grouping():
    assert _found("138 123 456 78") == [("mobile", "138 123 456 78")]
    assert _found("电话1381-234-5678") == [("mobile", "1381-234-5678")]
    assert _found("身份证 110105 19491231 002X") == [("id_card", "110105 19491231 002X")]
    assert _found("卡号 6222 0212 3456 7890 128") == [("bank_card", "6222 0212 3456 7890 128")]
    assert _found("座机010 8256 1234，传真0755-8601-3388") == [
        ("landline", "010 8256 1234"),
        ("landline", "0755-8601-3388"),
    ]
    two = _found("+86 138 1234 5678 139 8765 4321")  # a list of phones in one run: each whole
    assert two == [("mobile", "+86 138 1234 5678"), ("mobile", "139 8765 4321")]
    # controls: a stray number beside a phone stays out of its span; dates, amounts, other countries
    assert _found("数量3 13812345678") == [("mobile", "13812345678")]
    assert _found("2024-03-15 12:30，共 138 1234 5678 元，+1 3812345678", ["mobile"]) == []
    assert _found("日期2024-0312-1234，编号0123 4567 8901") == []


def test_phones_grouped_with_dots():
    """Dots group a phone like spaces and dashes do, in the phone shapes only (a 4-digit group no IP, version,
    price or date has); found, masked and pseudonymized in the original's grouping."""
    assert _found("手机：138.1234.5678。") == [("mobile", "138.1234.5678")]
    assert _found("电话 +86.138.1234.5678 或 0086.139.8765.4321") == [
        ("mobile", "+86.138.1234.5678"),
        ("mobile", "0086.139.8765.4321"),
    ]
    assert _found("座机010.6552.9988，传真0755.8601.3388，+86.10.6552.9988") == [
        ("landline", "010.6552.9988"),
        ("landline", "0755.8601.3388"),
        ("landline", "+86.10.6552.9988"),
    ]
    assert pii.scrub("打138.1234.5678", "placeholder")[0] == "打[手机号]"
    assert pii.scrub("打138.1234.5678", "mask")[0] == "打138.****.5678"
    assert re.fullmatch(r"打154\.\d{4}\.\d{4}", pii.scrub("打138.1234.5678", "pseudonym")[0])
    assert re.fullmatch(r"010\.1\d{3}\.\d{4}", pii.scrub("010.6552.9988", "pseudonym")[0])
    # controls: versions, addresses, decimals and prices, dates, and a phone shape inside a longer dotted number
    for text in ["版本 1.2.3", "升级到 13.1.2", "价格 138.12 元", "均值 138.1234", "2024.05.06", "日期 2024.5.6"]:
        assert _found(text) == [], text
    assert _found("server 192.168.1.10") == [("ip", "192.168.1.10")]
    assert _found("139.168.100.20 到 139.16.8.100") == [("ip", "139.168.100.20"), ("ip", "139.16.8.100")]
    assert _found("1.138.1234.5678 与 138.1234.5678.9 与 v138.1234.5678") == []


def test_person_shaped_words_in_context():
    for text in ["一直向东走就到了", "我买了一双李宁的跑鞋", "李宁专卖店在二楼", "周大福的金饰", "王老吉凉茶"]:
        assert _found(text, ["name"]) == [], text
    for text in ["石家庄今天下雪", "方正县城", "文昌发射场", "江西人爱吃辣", "华为和小米", "杨国福麻辣烫"]:
        assert _found(text, ["name"]) == [], text
    # controls: the same words with a person cue or label, and names before verbs that look like places
    assert _found("李宁先生是体操运动员", ["name"]) == [("name", "李宁")]
    assert _found("姓名：李宁", ["name"]) == [("name", "李宁")]
    assert _found("向东老师好", ["name"]) == [("name", "向东")]
    assert _found("王芳路过这里", ["name"]) == [("name", "王芳")]


def test_compound_surnames_and_shipping_verbs():
    """Review misses (Q163), development cases (the held-out set has its own frames and values)."""
    for text, addr in [
        ("包裹寄往成都市武侯区人民南路四段9号", "成都市武侯区人民南路四段9号"),
        ("把文件发往广州天河区体育西路103号", "广州天河区体育西路103号"),
        ("货已运到武汉市洪山区珞喻路1037号", "武汉市洪山区珞喻路1037号"),
        ("发往杭州市西湖区文三路478号的货", "杭州市西湖区文三路478号"),  # the verb is not part of the address
    ]:
        assert _found(text, ["address"]) == [("address", addr)], text
    for text in ["送到楼下就行", "发往上海的航班", "寄往国外要报关"]:  # negative controls: the verbs alone
        assert _found(text, ["address"]) == [], text
    if not pii._jieba_ok():
        pytest.skip(pii.NAMES_NEED_JIEBA)
    for text, name in [
        ("请联系上官婉清", "上官婉清"),  # jieba: 上官|婉|清
        ("司马睿的论文", "司马睿"),  # 司马|睿的
        ("下午夏侯雪会来", "夏侯雪"),  # 夏侯|雪会|来
        ("诸葛云天负责这事", "诸葛云天"),
        ("欧阳一凡的书", "欧阳一凡"),  # 一凡 tagged as an adjective
        ("我刚和欧阳峰通了电话", "欧阳峰"),  # tagged as a place
    ]:
        assert _found(text, ["name"]) == [("name", name)], text
    for text in ["请上官方网站查询", "东方明珠塔很高", "欧阳明天来"]:  # 上|官方, a landmark, a surname alone
        assert _found(text, ["name"]) == [], text


def test_card_low_confidence_near_cue():
    bad = "6222021234567890123"
    assert not pii.luhn_ok(bad)
    assert [m.confidence for m in pii.scan(f"银行卡号{bad}")] == [0.3]
    assert pii.scan(f"参考号{bad}") == []
    assert "[银行卡号]" in pii.scrub(f"银行卡号{bad}")[0]  # low confidence is still scrubbed by default


def test_id_beats_card_on_overlap():
    body = "62010219900101123"
    idc = body + pii.id_check_char(body)  # 甘肃 IDs start with 62 like UnionPay cards
    assert [m.type for m in pii.scan(f"号码{idc}")] == ["id_card"]


def test_names_degrade_without_jieba(monkeypatch):
    monkeypatch.setattr(pii_match, "_JIEBA", [False])
    assert [m.text for m in pii.scan("姓名：张伟，联系人王小明", ["name"])] == ["张伟", "王小明"]
    assert pii.scan("请王小明先生到前台", ["name"]) == []


# ----------------------------------------------------------------------------- scrubbing

TEXT = "张伟先生的身份证11010519491231002X，手机138-1234-5678，卡号6222021234567890128，张伟再说一次：13812345678"


def test_placeholder_and_mask():
    out, matches = pii.scrub(TEXT)
    assert "[身份证号]" in out and "[手机号]" in out and "[银行卡号]" in out and "11010519491231002X" not in out
    masked = pii.scrub("手机13812345678，身份证11010519491231002X，卡号6222021234567890128", "mask")[0]
    assert masked == "手机138****5678，身份证110105********002X，卡号622202*********0128"
    # spoken and full-width digits mask like ASCII ones: no digit of the middle survives
    assert (
        pii.scrub("电话一三八一二三四五六七八，或１３９１２３４５６７８", "mask")[0] == "电话138****5678，或139****5678"
    )


def test_mask_full_width_email_keeps_domain():
    # a full-width ＠ was not split on: the mask kept one letter and "@", the domain was lost
    assert pii.scrub("邮箱 zhang@example.com", "mask")[0] == "邮箱 z***@example.com"
    assert pii.scrub("邮箱是 ＺＨＡＮＧ＠ＥＸＡＭＰＬＥ．ＣＯＭ", "mask")[0] == "邮箱是 Ｚ***＠ＥＸＡＭＰＬＥ．ＣＯＭ"


def test_pseudonyms_consistent_and_checksum_invalid():
    rep = pii.replacer("pseudonym", seed=1)
    out, matches = pii.scrub(TEXT, replace=rep)
    assert out.count(rep(pii.Match("name", 0, 0, "张伟", 1))) == 2  # same value → same fake
    fakes = {m.type: rep(m) for m in reversed(matches)}  # the first match of each type
    assert not pii.valid_id(fakes["id_card"]) and len(fakes["id_card"]) == 18
    assert not pii.luhn_ok(fakes["bank_card"]) and fakes["bank_card"][:6] == "622202"
    assert re.fullmatch(r"154-\d{4}-\d{4}", fakes["mobile"])
    assert not [m for m in pii.scan(out, min_confidence=0.5) if m.type in ("id_card", "bank_card")]
    r = random.Random(0)
    assert not any(pii.valid_id(pii_fake.fake_id(r)) or pii.luhn_ok(pii_fake.fake_card(r)) for _ in range(500))


def _fakes(kind: str, text: str, n: int = 200) -> list[str]:
    return [pii_fake.Pseudonymizer(seed)(pii.Match(kind, 0, len(text), text, 1.0)) for seed in range(n)]


def test_fake_numbers_keep_grouping_and_reach_nobody():
    """Fake mobiles sit in the unallocated 154 range, written in the original's grouping and prefix."""
    for original, shape in [
        ("138 1234 5678", r"154 \d{4} \d{4}"),
        ("+86 13812345678", r"\+86 154\d{8}"),
        ("一三八一二三四五六七八", r"154\d{8}"),
        ("１３８１２３４５６７８", r"154\d{8}"),
    ]:
        for fake in _fakes("mobile", original, 20):
            assert re.fullmatch(shape, fake), (original, fake)
            assert [m.type for m in pii.scan(fake)] == ["mobile"]  # still reads as a phone
    for fake in _fakes("id_card", "110105 19491231 002X", 20):
        assert re.fullmatch(r"\d{6} \d{8} \d{4}", fake) and not pii.valid_id(fake.replace(" ", ""))
    for fake in _fakes("landline", "010-82561234", 20):  # local numbers start 2-9: 1 reaches no line
        assert re.fullmatch(r"010-1\d{7}", fake), fake
    sft, dpo = pii_files.make_refusals(300, seed=2)
    leaked = [re.search(r"(?<!\d)1\d{10}(?!\d)", p["rejected"]) for p in dpo]
    assert leaked and all(m.group().startswith("154") for m in leaked if m)


def test_fake_addresses_pair_real_cities_and_districts():
    pairs = {(c, d) for _, c, d in pii_data.REAL_PLACES}
    cities = sorted({c for _, c, _ in pii_data.REAL_PLACES}, key=len, reverse=True)
    for original, city0, district0 in [
        ("山东省济南市历下区泉城路180号", "济南", "历下区"),
        ("北京市海淀区中关村大街27号3号楼502室", "北京", "海淀区"),
    ]:
        for fake in _fakes("address", original):
            city = next(c for c in cities if c in fake)
            district = re.match(r"(?:\w+?省)?\w+?市(\w+?区)", fake).group(1)
            assert (city, district) in pairs, fake
            assert city0 not in fake and district0 not in fake  # nothing of the real place stays
            assert ("省" in fake) <= ("省" in original)  # a province only where the original named one
            assert ("室" in fake) == ("室" in original)
            assert [m.type for m in pii.scan(f"地址：{fake}")] == ["address"], fake


PLATE_SHAPES = {  # original -> the shape every fake must have (≤ 2 letters in an ordinary 5-character tail)
    "京A12345": r"京A(?=(?:\d*[A-HJ-NP-Z]){0,2}\d*$)[0-9A-HJ-NP-Z]{5}",
    "苏E·88K72": r"苏E·(?=(?:\d*[A-HJ-NP-Z]){0,2}\d*$)[0-9A-HJ-NP-Z]{5}",
    "浙AD12345": r"浙AD[0-9A-HJ-NP-Z]\d{4}",
    "粤B12345F": r"粤B\d{5}F",
    "湘A1234学": r"湘A(?=(?:\d*[A-HJ-NP-Z]){0,2}\d*学)[0-9A-HJ-NP-Z]{4}学",
}


@pytest.mark.parametrize("original", list(PLATE_SHAPES))
def test_fake_plates_follow_the_plate_format(original):
    for fake in _fakes("plate", original):
        assert re.fullmatch(PLATE_SHAPES[original], fake), fake
        assert [m.text for m in pii.scan(f"车牌{fake}，")] == [fake]


def test_pseudonyms_hold_across_rows_of_a_file(tmp_path):
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    rows = [{"text": "张伟的手机13812345678"}, {"text": "再打138 1234 5678找张伟"}, {"text": "王芳 13912345678"}]
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    pii_files.process_file(src, dst, "pseudonym", seed=7)
    out = [json.loads(line)["text"] for line in dst.read_text(encoding="utf-8").splitlines()]
    phones = [re.sub(r"\D", "", m) for t in out for m in re.findall(r"1\d{2} ?\d{4} ?\d{4}", t)]
    assert phones[0] == phones[1] != phones[2]  # same number in any grouping → one fake; another → another
    names = [re.match(r"\w{2,3}?(?=的)", out[0]).group(), re.search(r"找(\w+)$", out[1]).group(1)]
    assert names[0] == names[1] != "张伟"


def test_unknown_type_and_mode_are_user_errors():
    with pytest.raises(UserError, match="unknown"):
        pii.scan("x", ["phone"])
    with pytest.raises(UserError, match="unknown"):
        pii.replacer("hash")


# ----------------------------------------------------------------------------- files and CLI

ROWS = {
    "alpaca": {"instruction": "联系张伟先生", "input": "电话13812345678", "output": "好的，已记下13812345678"},
    "sharegpt": {
        "conversations": [
            {"from": "human", "value": "我的邮箱是wei@qq.com"},
            {"from": "gpt", "value": "收到wei@qq.com"},
        ]
    },
    "openai": {
        "messages": [
            {"role": "system", "content": "你是助手"},
            {"role": "user", "content": "身份证11010519491231002X"},
            {"role": "assistant", "content": "请勿泄露11010519491231002X"},
        ]
    },
    "preference": {"prompt": "卡号6222021234567890128", "chosen": "不能提供", "rejected": "卡号是6222021234567890128"},
}


@pytest.mark.parametrize("fmt", list(ROWS))
@pytest.mark.parametrize("mode", pii.MODES)
def test_scrub_file_keeps_shape(tmp_path, fmt, mode):
    from weitiao.data.formats import load_rows

    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text(json.dumps(ROWS[fmt], ensure_ascii=False) + "\n", encoding="utf-8")
    rep = pii_files.process_file(src, dst, mode, seed=3)
    assert rep.format == fmt and rep.rows_with_pii == 1 and sum(rep.counts.values()) >= 2
    out = json.loads(dst.read_text(encoding="utf-8"))
    assert json.dumps(out, sort_keys=True).count('"') == json.dumps(ROWS[fmt], sort_keys=True).count('"')
    assert set(out) == set(ROWS[fmt]) and load_rows(dst).format == fmt
    assert not pii_files.process_file(dst, None, min_confidence=0.5).counts["id_card"]
    if mode == "pseudonym":  # the value repeated across turns gets one fake
        texts = re.findall(r"1\d{10}|[a-z0-9]+@example\.com|\d{17}[\dX]|\d{19}", json.dumps(out, ensure_ascii=False))
        assert len(texts) == 2 and texts[0] == texts[1]


def test_pii_in_id_source_and_type_fields_is_found(tmp_path):
    """Only a message's role and a content part's type are structural: PII in `id`, `source`, `type` is scanned."""
    row = {"instruction": "总结", "input": "客户来电", "output": "已处理", "source": "客服张伟 13812345678",
           "id": "13912345678", "type": "投诉 邮箱 a@b.com"}  # fmt: skip
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    rep = pii_files.process_file(src, dst, "placeholder")
    assert rep.counts["mobile"] == 2 and rep.counts["email"] == 1 and set(rep.fields) == {"source", "id", "type"}
    out = json.loads(dst.read_text(encoding="utf-8"))
    assert "138" not in out["source"] and "139" not in out["id"] and "a@b.com" not in out["type"]


def test_a_bare_86_prefix_goes_with_the_mobile():
    """`86-138-1234-5678` was scrubbed from 138 and left `86-` behind; `8613812345678` (no +) was not found at all.
    `+86`/`0086` already went with the number; a 13-digit run that only starts with 86 is no mobile."""
    assert pii.scrub("电话86-138-1234-5678")[0] == "电话[手机号]"
    assert pii.scrub("电话86 138 1234 5678", mode="pseudonym")[0].startswith("电话86 154 ")
    assert [(m.text, m.confidence) for m in pii.find_mobile("电话8613812345678")] == [("8613812345678", 0.65)]
    assert [m.confidence for m in pii.find_mobile("订单号8613812345678")] == [0.5]
    assert pii.scrub("电话+86-138-1234-5678")[0] == "电话[手机号]"  # control: as before
    assert pii.find_mobile("编号8612345678901") == []  # 86 + 12…: not a mobile


def test_numbers_stored_as_json_integers_are_scanned_and_scrubbed(tmp_path):
    """{"phone": 13812345678} was left in the scrubbed file (only strings were scanned); small integers, booleans and
    floats stay as they are."""
    row = {"user": "客户", "phone": 13812345678, "card": 6222021234567890128, "age": 30, "ok": True, "score": 1.5,
           "ids": [13912345678, 7]}  # fmt: skip
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text(json.dumps(row) + "\n", encoding="utf-8")
    rep = pii_files.process_file(src, dst, "mask")
    assert (rep.counts["mobile"], rep.counts["bank_card"]) == (2, 1) and set(rep.fields) == {"phone", "card", "ids[]"}
    out = json.loads(dst.read_text(encoding="utf-8"))
    assert out == {**row, "phone": "138****5678", "card": "622202*********0128", "ids": ["139****5678", 7]}
    assert pii_files.process_file(src, None, fields=["phone"]).counts["mobile"] == 1


def test_a_number_that_becomes_a_string_is_reported_and_a_pseudonym_stays_a_number(tmp_path):
    """{"phone": 13812345678} came back as "138****5678" (or "15408331989" from pseudonym) without a word: a reader
    expecting a number broke later. A masked or placeholder value is no number: the fields are named in the report
    and on the terminal; a pseudonym that is digits stays a JSON number."""
    from typer.testing import CliRunner

    from weitiao.safety.commands import app

    args = json.dumps({"phone": 13912345678})
    rows = [{"phone": 13812345678, "ids": [13712345678, 7], "order": 1234567, "args": args}, {"phone": "13812345670"}]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    rep = pii_files.process_file(src, tmp_path / "m.jsonl", "mask")
    assert rep.retyped == {"phone": 1, "ids[]": 1, "args.phone": 1}  # the string phone was a string already
    rep = pii_files.process_file(src, tmp_path / "p.jsonl", "pseudonym", seed=1)
    out = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text(encoding="utf-8").splitlines()]
    assert rep.retyped == {} and isinstance(out[0]["phone"], int) and out[0]["phone"] != 13812345678
    assert isinstance(out[0]["ids"][0], int) and isinstance(json.loads(out[0]["args"])["phone"], int)
    assert isinstance(out[1]["phone"], str) and out[0]["order"] == 1234567
    res = CliRunner().invoke(app, ["scrub", str(src), "--mode", "placeholder", "--out", str(tmp_path / "c.jsonl")])
    assert res.exit_code == 0, res.output
    assert "JSON numbers became strings in the output (args.phone ×1, ids[] ×1, phone ×1)" in " ".join(
        res.output.split()
    )


@pytest.mark.parametrize("mode", ["placeholder", "mask", "pseudonym"])
def test_tool_call_arguments_stay_json(tmp_path, mode):
    """A tool call's `arguments` is JSON in a string: scrubbed as text, {"phone": 13812345678} became
    {"phone": [手机号]}, no longer JSON, and the row no longer loaded for training."""
    args = {"phone": 13812345678, "note": "寄到 13912345678", "n": 2}
    call = {"id": "c1", "type": "function", "function": {"name": "ship", "arguments": json.dumps(args)}}
    row = {"messages": [{"role": "user", "content": "寄快递"}, {"role": "assistant", "tool_calls": [call]},
                        {"role": "tool", "tool_call_id": "c1", "content": "{}"},
                        {"role": "assistant", "content": "好"}]}  # fmt: skip
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    rep = pii_files.process_file(src, dst, mode, seed=1)
    where = "messages[].tool_calls[].function.arguments"
    assert rep.counts["mobile"] == 2 and set(rep.fields) == {f"{where}.phone", f"{where}.note"}
    out = json.loads(dst.read_text(encoding="utf-8"))
    got = json.loads(out["messages"][1]["tool_calls"][0]["function"]["arguments"])  # still JSON
    assert set(got) == {"phone", "note", "n"} and got["n"] == 2
    assert "13812345678" not in json.dumps(got) and "13912345678" not in json.dumps(got, ensure_ascii=False)
    assert out["messages"][2]["content"] == "{}"  # JSON without PII: the string as it was
    assert pii_files.process_file(src, None, fields=[where]).counts["mobile"] == 2


def test_any_row_shape_is_scanned_kto_and_mixed_files_too(tmp_path):
    """pii scan is no validator: a KTO row (refused by training), a file mixing messages and text rows, a malformed
    training row: every string is scanned."""
    rows = [
        {"messages": [{"role": "user", "content": "电话13812345678"}]},
        {"text": "邮箱 a@b.com"},
        {"prompt": "卡", "completion": "13912345678", "label": True},
        {"instruction": "身份证", "output": ""},
    ]
    src = tmp_path / "mixed.jsonl"
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    rep = pii_files.process_file(src)
    assert rep.rows == 4 and rep.counts["mobile"] == 2 and rep.counts["email"] == 1 and rep.rows_with_pii == 3


def test_cli_scan_scrub_refusals(tmp_path):
    from typer.testing import CliRunner

    from weitiao.data.formats import load_rows
    from weitiao.safety.commands import app

    src = tmp_path / "d.jsonl"
    src.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in [ROWS["openai"]] * 3) + "\n", encoding="utf-8")
    runner = CliRunner()
    res = runner.invoke(app, ["scan", str(src), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)[0]["counts"]["id_card"] == 6
    res = runner.invoke(app, ["scrub", str(src), "--mode", "mask"])
    assert res.exit_code == 0 and "110105********002X" in (tmp_path / "d.scrubbed.jsonl").read_text(encoding="utf-8")
    res = runner.invoke(app, ["scrub", str(tmp_path / "missing.jsonl")])
    assert isinstance(res.exception, UserError) and "file not found" in str(res.exception)
    res = runner.invoke(app, ["refusals", "--n", "20", "--out", str(tmp_path / "r.jsonl")])
    assert res.exit_code == 0, res.output
    assert load_rows(tmp_path / "r.jsonl").format == "openai" and len(load_rows(tmp_path / "r.jsonl").rows) == 20
    assert load_rows(tmp_path / "r.dpo.jsonl").format == "preference"
    # prompts drawn with replacement repeat: 500 rows held 407 distinct prompts without a word
    res = runner.invoke(app, ["refusals", "--n", "500", "--out", str(tmp_path / "big.jsonl")])
    rows = load_rows(tmp_path / "big.jsonl").rows
    distinct = len({json.dumps(r.messages[:-1], ensure_ascii=False) for r in rows})
    assert distinct < 500 and f"note: {distinct:,} distinct prompts among the 500 rows" in " ".join(res.output.split())
    assert (
        "distinct prompts"
        not in runner.invoke(app, ["refusals", "--n", "1", "--out", str(tmp_path / "1.jsonl")]).output
    )


def test_cli_scrub_of_several_files_writes_all_or_none_and_refuses_a_seed_it_would_ignore(tmp_path):
    """`scrub a.jsonl empty.jsonl --out DIR` left DIR/a.scrubbed.jsonl behind when the second file failed (a half
    result, exit 1); `--seed` with placeholder or mask drew nothing from it, silently."""
    from typer.testing import CliRunner

    from weitiao.safety.commands import app

    good, empty, out = tmp_path / "a.jsonl", tmp_path / "empty.jsonl", tmp_path / "out"
    good.write_text(json.dumps(ROWS["openai"], ensure_ascii=False) + "\n", encoding="utf-8")
    empty.write_text("", encoding="utf-8")
    res = CliRunner().invoke(app, ["scrub", str(good), str(empty), "--out", str(out)])
    assert isinstance(res.exception, UserError) and "empty.jsonl" in str(res.exception)
    assert not out.exists() or list(out.iterdir()) == []  # nothing of this run left, not even a temp file
    res = CliRunner().invoke(app, ["scrub", str(good), "--mode", "mask", "--seed", "5"])
    assert isinstance(res.exception, UserError) and "--seed 5: only --mode pseudonym" in str(res.exception)
    res = CliRunner().invoke(app, ["scrub", str(good), str(good.with_name("b.jsonl")), "--out", str(out)])
    assert isinstance(res.exception, UserError)  # a missing second input: refused before anything is written
    good.with_name("b.jsonl").write_text(good.read_text(encoding="utf-8"), encoding="utf-8")
    res = CliRunner().invoke(app, ["scrub", str(good), str(tmp_path / "b.jsonl"), "--out", str(out), "--mode",
                                   "pseudonym", "--seed", "5"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["a.scrubbed.jsonl", "b.scrubbed.jsonl"]


def test_an_id_with_a_typo_d_check_character_after_its_cue_is_scrubbed():
    """17 digits with a real province and birth date name the person whatever the check character: after 身份证 such
    a number is found at low confidence (as a Luhn-failing card after 卡号) and scrubbed; after 订单号 it is left."""
    good = "11010519900307123" + pii.id_check_char("11010519900307123")
    typo = good[:17] + ("0" if good[17] != "0" else "1")
    assert not pii.valid_id(typo)
    text = f"身份证号{typo}，请核对"
    assert [(m.type, m.text, m.confidence) for m in pii.scan(text)] == [("id_card", typo, 0.3)]
    assert pii.scrub(text)[0] == "身份证号[身份证号]，请核对"
    assert pii.scrub(text, min_confidence=0.5)[0] == text  # not trusted: not in `serve --pii` or `pii eval`
    assert pii.scan(f"订单号{typo}") == []  # no cue: an 18-digit number
    assert pii.scan(f"身份证号{good}")[0].confidence == 0.99


def test_an_id_with_a_typo_d_check_character_without_a_cue_is_scrubbed():
    """A typo'd ID (real province and birth date, wrong check character) with no 身份证 near it was left in scrubbed
    text while the valid one beside the same words was scrubbed; now it is found at 0.3 too. 18-digit numbers that
    are not ID-shaped, ID-shaped ones after an order cue, phones and cards keep their own reading."""
    body = "32050219850612341"  # 苏州, born 1985-06-12
    good = body + pii.id_check_char(body)
    for typo in [body + c for c in "0123456789X" if c != good[17] and not (c != "X" and pii.luhn_ok(body + c))]:
        for text in (f"客户 {typo} 已登记", f"他的号码是{typo[:6]} {typo[6:14]} {typo[14:]}。", f"档案号{typo}"):
            assert [(m.type, m.confidence) for m in pii.scan(text)] == [("id_card", 0.3)], text
            assert "[身份证号]" in pii.scrub(text)[0] and typo[6:14] not in pii.scrub(text)[0]
        assert pii.scan(f"订单号{typo}") == pii.scan(f"快递单号：{typo}") == []  # an order number
        assert [m.type for m in pii.scan(f"订单号{typo}，身份证")] == ["id_card"]  # the ID cue wins
    assert [(m.type, m.confidence) for m in pii.scan(f"客户 {good} 已登记")] == [("id_card", 0.99)]
    not_ids = [
        "202312150000123456",  # an order number: no province 20
        "320502198513123410",  # month 13
        "320502189906123410",  # born 1899
        f"320502{dt.date.today().year + 1}06123410",  # born next year
        "990502198506123410",  # no province 99
    ]
    for n in not_ids:
        assert len(n) == 18 and pii.scan(f"客户 {n} 已登记") == [], n
    card = "62220212345678901" + pii.luhn_digit("62220212345678901")  # 18-digit card, not ID-shaped
    assert [m.type for m in pii.scan(f"转账到 {card}")] == ["bank_card"]
    assert [m.type for m in pii.scan(f"打款 {card}")] == ["bank_card"]
    lucky = next(body + c for c in "0123456789" if c != good[17] and pii.luhn_ok(body + c))  # ID-shaped, Luhn-valid
    assert [(m.type, m.confidence) for m in pii.scan(f"转账到 {lucky}")] == [("bank_card", 0.99)]
    assert [(m.type, m.confidence) for m in pii.scan(f"客户 {lucky}")] == [("id_card", 0.3)]
    assert [m.type for m in pii.scan("电话 13812345678，138 1234 5678")] == ["mobile", "mobile"]


def test_a_first_generation_15_digit_id_after_its_cue_is_scrubbed():
    """15-digit resident IDs (issued until 2004, still in old records) were not found even after 身份证号 and stayed in
    scrubbed files. They have no check digit: province code + a real 19YYMMDD date, and only next to a cue."""
    text = "身份证号 110105491231002，手机13812345678"
    assert [(m.type, m.text) for m in pii.scan(text)] == [("id_card", "110105491231002"), ("mobile", "13812345678")]
    assert pii.scrub(text)[0] == "身份证号 [身份证号]，手机[手机号]"
    assert pii.scrub(text, "mask")[0].startswith("身份证号 110105*****1002，")
    fake = pii.scrub(text, "pseudonym")[0].split()[1][:15]
    assert fake != "110105491231002" and not pii.scan(f"身份证号 {fake}")  # a fake no reader takes for an ID
    for other in ("订单号 110105491231002", "身份证号 110105491331002", "身份证号 990105491231002"):
        assert pii.scan(other) == [], other  # no cue; month 13; no province 99


def test_min_confidence_outside_0_1_is_refused(tmp_path):
    from typer.testing import CliRunner

    from weitiao.safety.commands import app

    src = tmp_path / "d.jsonl"
    src.write_text(json.dumps({"text": "电话13812345678"}) + "\n", encoding="utf-8")
    for cmd in (["scan", str(src)], ["scrub", str(src)], ["eval"]):
        res = CliRunner().invoke(app, [*cmd, "--min-confidence", "5"])
        assert isinstance(res.exception, UserError) and "--min-confidence 5: must be in [0, 1]" in str(res.exception)
    assert not (tmp_path / "d.scrubbed.jsonl").exists()  # it wrote the phone number back unscrubbed
    res = CliRunner().invoke(app, ["scan", str(src), "--min-confidence", "1", "--json"])
    assert res.exit_code == 0, res.output


def test_refusal_pairs_leak_only_invalid_values():
    sft, dpo = pii_files.make_refusals(200, seed=1)
    assert len(sft) == len(dpo) == 200
    for p in dpo:
        assert not [m for m in pii.scan(p["chosen"]) if m.type in ("id_card", "bank_card", "mobile")]
        for m in re.findall(r"\d{15,19}[\dX]?", p["rejected"]):
            assert not pii.valid_id(m) and not pii.luhn_ok(m[:19].rstrip("X"))
    leaks = [p["rejected"] for p in dpo if re.search(r"\d{16}", p["rejected"])]
    # a fake ID is never a valid one; after 身份证 it is found at low confidence, as a typo'd real ID is
    assert leaks and all(not pii.scan(t, ["id_card"], min_confidence=0.5) for t in leaks)


if __name__ == "__main__":
    from weitiao.io import write_jsonl

    write_jsonl(DATA, build_labelled())
    for name, rows in [("all", build_labelled()), ("hand", [r for r in build_labelled() if r.get("source")])]:
        print(name)
        for t, v in score(rows).items():
            print(f"{t:10s} P={v['precision']:.3f} R={v['recall']:.3f}  tp={v['tp']} fp={v['fp']} fn={v['fn']}")


def test_server_output_filter_redacts_or_blocks():
    from weitiao.safety.pii import output_filter

    reply = "好的，他的手机号是13812345678，邮箱 zhang@example.com"
    red = output_filter("redact")(reply)
    assert "13812345678" not in red and "[手机号]" in red and red.startswith("好的，")
    assert output_filter("block")(reply).startswith("抱歉")
    assert output_filter("block")("周末去爬山吧😊") == "周末去爬山吧😊"


def test_scan_scrub_any_jsonl_with_fields(tmp_path):
    """A {"text": ...} corpus and arbitrary nested JSON rows, not only training formats; --fields limits."""
    from typer.testing import CliRunner

    from weitiao.safety.commands import app

    src = tmp_path / "logs.jsonl"
    rows = [
        {"text": "请联系13812345678", "meta": {"notes": ["邮箱 a@qq.com"], "id": "13912345678"}, "n": 3},
        {"text": "无", "meta": {"notes": [], "id": "x"}, "n": 4},
    ]
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    rep = pii_files.process_file(src)
    assert rep.format == "json" and rep.counts["mobile"] == 2 and rep.counts["email"] == 1  # id too: all strings
    assert rep.fields == {"text": 1, "meta.notes[]": 1, "meta.id": 1}
    only = pii_files.process_file(src, fields=["meta"])
    assert only.fields == {"meta.notes[]": 1, "meta.id": 1}
    runner = CliRunner()
    res = runner.invoke(app, ["scrub", str(src), "--fields", "text", "--out", str(tmp_path / "o.jsonl")])
    assert res.exit_code == 0, res.output
    out = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text(encoding="utf-8").splitlines()]
    assert out[0]["text"] == "请联系[手机号]" and out[0]["meta"] == rows[0]["meta"] and out[1] == rows[1]
    # a field that matches nothing is a one-line error, and leaves no output behind
    res = runner.invoke(app, ["scrub", str(src), "--fields", "body", "--out", str(tmp_path / "p.jsonl")])
    assert isinstance(res.exception, UserError) and "--fields body matched no string" in str(res.exception)
    assert "meta.notes[]" in str(res.exception) and not (tmp_path / "p.jsonl").exists()


def test_pseudonyms_for_many_values_terminate_in_documentation_ranges():
    """A file with more distinct IPs than the fake pool still finishes; every fake stays a documentation address."""
    import ipaddress

    rep = pii_fake.Pseudonymizer(0)
    fakes = {rep(pii.Match("ip", 0, 0, f"10.{i // 256}.{i % 256}.7", 1.0)) for i in range(1000)}
    assert len(fakes) > 700
    nets = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")]
    assert all(any(ipaddress.ip_address(f) in n for n in nets) for f in fakes)
    assert ipaddress.ip_address(rep(pii.Match("ip", 0, 0, "fe80::1", 1.0))) in ipaddress.ip_network("2001:db8::/32")


def test_cli_scrub_run_twice_replaces_its_own_output(tmp_path):
    """The second `pii scrub d.jsonl` was refused with 'exists and was not written by weitiao': outputs are renamed
    from a temp file and the ledger of what weitiao wrote knew only the temp name. A file the user wrote there is
    still refused."""
    from typer.testing import CliRunner

    from weitiao.safety.commands import app

    src = tmp_path / "d.jsonl"
    src.write_text(json.dumps({"text": "手机13812345678"}, ensure_ascii=False) + "\n", encoding="utf-8")
    for _ in range(2):
        res = CliRunner().invoke(app, ["scrub", str(src)])
        assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "d.scrubbed.jsonl").read_text(encoding="utf-8")) == {"text": "手机[手机号]"}
    (tmp_path / "d.scrubbed.jsonl").write_text("mine\n", encoding="utf-8")
    res = CliRunner().invoke(app, ["scrub", str(src)])
    assert isinstance(res.exception, UserError) and "not written by weitiao" in str(res.exception)


def test_scrub_of_another_input_with_the_same_default_name_is_refused(tmp_path):
    """`pii scrub p.csv` then `pii scrub p.jsonl.gz` both defaulted to p.scrubbed.jsonl: the second run replaced the
    first's result with exit 0. Now refused; the same input again still replaces its own output, --out still works."""
    import gzip

    from typer.testing import CliRunner

    from weitiao.safety.commands import app

    csv, gz = tmp_path / "p.csv", tmp_path / "p.jsonl.gz"
    csv.write_text("name,phone\n甲,13812345678\n", encoding="utf-8")
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        f.write(json.dumps({"phone": "13912345678"}) + "\n")
    out = tmp_path / "p.scrubbed.jsonl"
    assert CliRunner().invoke(app, ["scrub", str(csv)]).exit_code == 0
    first = out.read_text(encoding="utf-8")
    res = CliRunner().invoke(app, ["scrub", str(gz)])
    assert isinstance(res.exception, UserError) and f"wrote from {csv.resolve()}" in str(res.exception)
    assert out.read_text(encoding="utf-8") == first
    assert CliRunner().invoke(app, ["scrub", str(csv)]).exit_code == 0  # control: its own input again
    res = CliRunner().invoke(app, ["scrub", str(gz), "--out", str(out)])  # the user names the file: replaced
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text(encoding="utf-8")) == {"phone": "[手机号]"}


def test_scrub_ledger_names_only_the_outputs_that_stand(tmp_path, monkeypatch):
    """Each output is written as a `.pending` temp file first; the ledger of what weitiao wrote kept a record for
    every temp name, renamed away or removed. It holds the final outputs only, after a run and after a failed one."""
    import hashlib

    from typer.testing import CliRunner

    from weitiao.safety.commands import app

    monkeypatch.setenv("WEITIAO_CACHE", str(tmp_path / "cache"))
    ledger = tmp_path / "cache" / "written"

    def recorded() -> set[str]:
        return {p.name for p in ledger.iterdir()} if ledger.exists() else set()

    def key(path) -> str:
        return hashlib.sha1(str(path.resolve()).encode()).hexdigest()

    a, b, bad = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "bad.jsonl"
    for f in (a, b):
        f.write_text(json.dumps({"text": "手机13812345678"}) + "\n", encoding="utf-8")
    bad.write_text("not json\n", encoding="utf-8")
    res = CliRunner().invoke(app, ["scrub", str(a), str(b), "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    outs = [tmp_path / "o" / "a.scrubbed.jsonl", tmp_path / "o" / "b.scrubbed.jsonl"]
    assert recorded() == {key(o) for o in outs}
    res = CliRunner().invoke(app, ["scrub", str(a), str(bad), "--out", str(tmp_path / "p")])
    assert isinstance(res.exception, UserError) and not (tmp_path / "p" / "a.scrubbed.jsonl").exists()
    assert recorded() == {key(o) for o in outs}


def test_output_names_keep_every_dot_of_the_input_name(tmp_path):
    """Names were cut at their first dot: chat.2024-05.jsonl and chat.2024-06.jsonl were both scrubbed into
    chat.scrubbed.jsonl, so the second run replaced the first one's output (and two of them in one run were refused);
    `refusals --out r.v1.jsonl` and `--out r.v2.jsonl` shared r.dpo.jsonl."""
    from typer.testing import CliRunner

    from weitiao.safety.commands import app

    for month, phone in (("05", "13812345678"), ("06", "13912345678")):
        (tmp_path / f"chat.2024-{month}.jsonl").write_text(json.dumps({"text": phone}) + "\n", encoding="utf-8")
        res = CliRunner().invoke(app, ["scrub", str(tmp_path / f"chat.2024-{month}.jsonl")])
        assert res.exit_code == 0, res.output
    assert sorted(p.name for p in tmp_path.glob("*.scrubbed.jsonl")) == [
        "chat.2024-05.scrubbed.jsonl",
        "chat.2024-06.scrubbed.jsonl",
    ]
    gz = tmp_path / "logs.v2.jsonl.gz"
    gz.write_bytes(__import__("gzip").compress(b'{"text": "13812345678"}\n'))
    res = CliRunner().invoke(
        app, ["scrub", str(gz), str(tmp_path / "chat.2024-05.jsonl"), "--out", str(tmp_path / "o")]
    )
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [
        "chat.2024-05.scrubbed.jsonl",
        "logs.v2.scrubbed.jsonl",
    ]
    for v in ("v1", "v2"):
        res = CliRunner().invoke(app, ["refusals", "--n", "2", "--out", str(tmp_path / f"r.{v}.jsonl")])
        assert res.exit_code == 0, res.output
    assert (tmp_path / "r.v1.dpo.jsonl").is_file() and (tmp_path / "r.v2.dpo.jsonl").is_file()


PSEUDONYM_TEXT = ("身份证 11010519491231002X，手机 138 1234 5678，工资卡 6222 0212 3456 7897，"
                  "邮箱 xiaoming.wang@qq.com，座机 010-82561234，IP 10.1.2.3")  # fmt: skip


def test_a_second_pseudonym_pass_leaves_the_first_passs_fakes_as_they_are():
    """`pii scrub --mode pseudonym` over its own output faked the fakes again (15408331989 → 15497660217, the tagless
    wrong-check ID and Luhn-failing card were read as typo'd real ones), so two runs over overlapping files gave one
    person two fakes. Our fakes are recognisable now (`pii_fake.ours`) and left alone, with any seed."""
    once, found = pii.scrub(PSEUDONYM_TEXT, replace=pii.replacer("pseudonym", seed=3))
    assert sorted(m.type for m in found) == ["bank_card", "email", "id_card", "ip", "landline", "mobile"]
    for m in found:
        assert m.text not in once  # every value was faked
    for seed in (3, 4):
        twice, again = pii.scrub(once, replace=pii.replacer("pseudonym", seed=seed))
        assert twice == once
        assert len(again) == 5 and all(pii_fake.ours(m) for m in again)  # a fake landline (010-1...) is no match


def test_our_fake_ids_and_cards_are_told_from_real_numbers_with_a_typo():
    """A fake ID or card fails its check digit as a typo'd real one does: the tag tells them apart, so a real number
    with a wrong check digit is still faked."""
    rng = random.Random(0)
    for _ in range(300):
        for kind, fake in (("id_card", pii_fake.fake_id(rng)), ("bank_card", pii_fake.fake_card(rng, "622202"))):
            assert pii_fake.ours(pii.Match(kind, 0, 0, fake, 0.3)), fake
    typos = [f"11010519491231002{c}" for c in "0123456789"] + [f"622202123456789{c}" for c in "012345689"]
    for t in typos:
        kind = "id_card" if len(t) == 18 else "bank_card"
        assert not pii_fake.ours(pii.Match(kind, 0, 0, t, 0.3)), t
        new = pii.scrub(f"身份证号码 {t}" if kind == "id_card" else f"卡号 {t}", "pseudonym")[0]
        assert t not in new, new
    real = pii.Match("mobile", 0, 0, "13812345678", 0.9)
    assert not pii_fake.ours(real) and not pii_fake.ours(pii.Match("email", 0, 0, "user12345@qq.com", 0.9))


def test_pseudonym_scrubs_of_overlapping_files_agree(tmp_path):
    """A file holding rows already scrubbed and new rows with the same people: the new rows get the fakes the first
    run gave, the old rows keep theirs, and the report counts the earlier fakes apart from PII."""
    a, a_out, b, b_out = (tmp_path / n for n in ("a.jsonl", "a.out.jsonl", "b.jsonl", "b.out.jsonl"))
    a.write_text(json.dumps({"text": PSEUDONYM_TEXT}, ensure_ascii=False) + "\n", encoding="utf-8")
    pii_files.process_file(a, a_out, "pseudonym", seed=0)
    scrubbed = a_out.read_text(encoding="utf-8")
    b.write_text(scrubbed + json.dumps({"text": PSEUDONYM_TEXT}, ensure_ascii=False) + "\n", encoding="utf-8")
    rep = pii_files.process_file(b, b_out, "pseudonym", seed=0)
    assert b_out.read_text(encoding="utf-8") == scrubbed * 2
    assert rep.pseudonyms == 5 and sum(rep.counts.values()) == 6 and rep.rows_with_pii == 1


PSEUDONYM_TEXT_2 = ("车主王小明的车牌号是京A·12345，护照号E87654321。欧阳娜娜和李娜去了武汉大学。邓丽君的歌很好听。"
                    "户名吴敏。收件人刘洋，地址：广东省深圳市福田区深南大道6008号特区报业大厦1801室，车牌浙AD12345、"
                    "粤B12345F、湘A1234学，护照EA1234567、D1234567。请把发票寄到北京市海淀区中关村大街27号3号楼502室，"
                    "联系人赵丽。")  # fmt: skip


def test_a_second_pseudonym_pass_leaves_fake_names_plates_passports_and_addresses():
    """A second `pii scrub --mode pseudonym` faked the first one's names, plates, passports and addresses again
    (李娜 → 席艳 → 谷艳, 粤B12345 → 粤B7A446 → 粤B7998B): they carry a tag now, and a fake name jieba cuts short
    (缪涵|婉和 found as 缪涵) is read whole."""
    kinds = {"name", "plate", "passport", "address"}
    for seed in range(25):
        once, found = pii.scrub(PSEUDONYM_TEXT_2, replace=pii.replacer("pseudonym", seed=seed))
        assert {m.type for m in found} == kinds
        twice, again = pii.scrub(once, replace=pii.replacer("pseudonym", seed=seed + 1))
        assert twice == once, seed
        assert all(pii_fake.ours(m) for m in again), [m for m in again if not pii_fake.ours(m)]
        assert not any(pii_fake.ours(m) for m in found)  # the real values were no fakes
    assert pii.scan("缪涵婉和潘斌颖去了武汉大学。", ["name"])[0].text == "缪涵婉" or not pii._jieba_ok()


def test_fake_name_plate_passport_tags_are_rare_among_real_values():
    """The tag is a hash: a real value carries it by chance (and is then left as written) about once in 1,000 for
    names spelled from the pool and plates, once in 10,000 for passports."""
    r = random.Random(0)
    surnames, given = sorted(pii_data.SURNAMES_1), pii_fake.NAME_GIVEN
    n = 20_000
    tagged = {
        "name": sum(pii_fake.ours(pii.Match("name", 0, 3, r.choice(surnames) + r.choice(given) + r.choice(given), 1))
                    for _ in range(n)),
        "plate": sum(pii_fake.ours(pii.Match("plate", 0, 7, f"京A{r.randrange(10**5):05d}", 1)) for _ in range(n)),
        "passport": sum(pii_fake.ours(pii.Match("passport", 0, 9, f"E{r.randrange(10**8):08d}", 1)) for _ in range(n)),
    }  # fmt: skip
    assert tagged["name"] < 60 and tagged["plate"] < 60 and tagged["passport"] < 10, tagged
    fakes = [pii_fake.Pseudonymizer(s)(pii.Match("name", 0, 2, "李娜", 1)) for s in range(200)]
    assert len(set(fakes)) > 150 and all(len(f) == 3 and f[0] != "李" for f in fakes)


def test_pseudonym_scrub_of_a_file_mixing_scrubbed_and_raw_rows(tmp_path):
    """Rows an earlier run scrubbed stay as they are, raw rows of the same people get the same fakes, and the report
    counts the earlier fakes as pseudonyms, the raw rows' values as PII."""
    a, a_out, b, b_out = (tmp_path / n for n in ("a.jsonl", "a.out.jsonl", "b.jsonl", "b.out.jsonl"))
    raw = json.dumps({"text": PSEUDONYM_TEXT_2}, ensure_ascii=False) + "\n"
    a.write_text(raw, encoding="utf-8")
    first = pii_files.process_file(a, a_out, "pseudonym", seed=0)
    scrubbed = a_out.read_text(encoding="utf-8")
    b.write_text(scrubbed + raw, encoding="utf-8")
    rep = pii_files.process_file(b, b_out, "pseudonym", seed=0)
    assert b_out.read_text(encoding="utf-8") == scrubbed * 2
    assert rep.counts == first.counts and rep.rows_with_pii == 1
    assert rep.pseudonyms == len(pii.scan(json.loads(scrubbed)["text"])) > 10  # a fake jieba tags no name is no match


def test_addresses_after_chinese_text_and_provinces_inside_road_names():
    """A city right after Chinese text without a cue was no address (寄给南京市鼓楼区中山北路200号 stayed in clear),
    山东 inside 中山东路 cut an address to 山东路1号, and 地址是深圳市… took 是 into the span."""
    for text, addr in [
        ("他把合同寄给南京市鼓楼区中山北路200号的律师。", "南京市鼓楼区中山北路200号"),
        ("公司搬去了杭州市滨江区江南大道3850号。", "杭州市滨江区江南大道3850号"),
        ("寄给攀枝花市东区人民街3号", "攀枝花市东区人民街3号"),  # a three-character city
        ("他去了石家庄市长安区中山东路1号", "石家庄市长安区中山东路1号"),
        ("石家庄市长安区中山东路1号", "石家庄市长安区中山东路1号"),
        ("新地址是深圳市南山区科技园科苑路15号", "深圳市南山区科技园科苑路15号"),
    ]:
        assert _found(text, ["address"]) == [("address", addr)], text
    for text in ["公司上市后搬到了人民路8号", "楼下超市人民路18号店"]:  # controls: 上市, 超市 name no city
        assert all(not m[1].startswith(("公司", "楼下", "司上", "下超")) for m in _found(text, ["address"])), text


def test_a_road_section_written_in_digits_is_part_of_the_address():
    """人民南路4段12号 (a section as a digit, as Chengdu writes it) was no address: 住在成都市武侯区人民南路4段12号
    stayed in clear in placeholder and pseudonym mode alike; 四段 was read."""
    for text, addr in [
        ("住在成都市武侯区人民南路4段12号。", "成都市武侯区人民南路4段12号"),
        ("地址：成都市武侯区人民南路四段12号", "成都市武侯区人民南路四段12号"),
        ("公司在台北市大安区信义路3段100号", "台北市大安区信义路3段100号"),
    ]:
        assert _found(text, ["address"]) == [("address", addr)], text


def test_plates_written_with_a_dash_and_permits_to_hong_kong_and_macau():
    """沪A-12345 (a dash is how plates are often typed) and 港澳通行证 C12345678 were left in clear; a C/W number
    still needs a 通行证/护照 cue, and a fake keeps the dash."""
    assert _found("车牌号码：沪A-12345", ["plate"]) == [("plate", "沪A-12345")]
    assert _found("港澳通行证C12345678已过期", ["passport"]) == [("passport", "C12345678")]
    assert _found("型号C12345678", ["passport"]) == [] and _found("C12345678", ["passport"]) == []
    for fake in _fakes("plate", "沪A-12345", 20):
        assert re.fullmatch(r"沪A-[0-9A-HJ-NP-Z]{5}", fake) and _found(f"车牌{fake}，") == [("plate", fake)], fake


def test_qq_numbers_and_wechat_ids_after_their_cues():
    """QQ号 12345678 and 微信号 zhang_san88 were no PII type: chat logs kept them in clear. Each is read after its cue
    (QQ/扣扣, 微信/vx/VX), wxid_… anywhere; a bare 8-digit number, a QQ group, 微信支付 stay as written. A fake
    keeps the shape, is found again after the same cue, and a second pass leaves it as it is."""
    text = "加我QQ号：12345678，或者微信 zhang_san88；老号wxid_k3j9d8s7a6b5c4已停用，vx：Lily2024"
    assert _found(text) == [("qq", "12345678"), ("wechat", "zhang_san88"), ("wechat", "wxid_k3j9d8s7a6b5c4"),
                            ("wechat", "Lily2024")]  # fmt: skip
    assert pii.scrub("QQ号：12345678，微信号：zhang_san88")[0] == "QQ号：[QQ号]，微信号：[微信号]"
    assert _found("扣扣 98765") == [("qq", "98765")] and _found("加微信zhangsan") == [("wechat", "zhangsan")]
    for clear in ("验证码12345678", "12345678", "QQ群564738291", "打开微信支付", "微信 Official Account", "qq音乐"):
        assert _found(clear, ["qq", "wechat"]) == [], clear  # controls: no cue, or a cue with no ID after it
    assert _found("微信同号13912345678") == [("mobile", "13912345678")]  # a number after a WeChat cue: the mobile
    once, found = pii.scrub(text, replace=pii.replacer("pseudonym", seed=1))
    assert [m.text for m in found if m.text in once] == []
    fakes = pii.scan(once)
    assert [m.type for m in fakes] == ["qq", "wechat", "wechat", "wechat"] and all(map(pii_fake.ours, fakes)), once
    assert [len(m.text) for m in fakes] == [len(m.text) for m in found] and fakes[2].text.startswith("wxid_")
    for seed in (1, 2):
        assert pii.scrub(once, replace=pii.replacer("pseudonym", seed=seed))[0] == once
    assert not any(pii_fake.ours(m) for m in found)  # the real values were no fakes
    for n in (5, 11):  # a fake QQ number never starts with 1: an 11-digit one would be read as a mobile
        assert all(not f.startswith("1") and len(f) == n for f in _fakes("qq", "1" * n, 20))
    assert pii.mask(found[0]) == "12******"


def test_names_after_record_labels_such_as_patient_and_owner():
    """病人何秀英，女，68岁，身份证… left the name in clear (jieba tags no person there) and the row was counted with
    its ID and address only: 病人, 业主, 借款人, 户名 … label a name as 患者 does."""
    text = "病人何秀英，女，68岁，身份证370202197812014512，家住青岛市市南区香港中路10号。"
    assert ("name", "何秀英") in _found(text)
    assert _found("业主谢婉婷已签字", ["name"]) == [("name", "谢婉婷")]
    assert _found("户名：吴敏", ["name"]) == [("name", "吴敏")]
    assert _found("房东说下月涨租", ["name"]) == []  # control: a label with no name after it


def test_qq_numbers_listed_after_one_cue_are_each_found():
    """QQ：12345、67890 或 24680 found the first number only; the others stayed in clear. Each listed number is a QQ
    number now; a mobile listed there stays a mobile, and words after the list end it. A second pseudonym pass
    leaves the fakes as they are."""
    text = "QQ：12345、67890 或 24680，谢谢"
    assert _found(text) == [("qq", "12345"), ("qq", "67890"), ("qq", "24680")]
    assert _found("QQ 12345678，13800138000") == [("qq", "12345678"), ("mobile", "13800138000")]
    assert _found("QQ号 12345678，电话 13800138000") == [("qq", "12345678"), ("mobile", "13800138000")]
    once = pii.scrub(text, "pseudonym")[0]
    assert "12345" not in once and "67890" not in once and pii.scrub(once, "pseudonym")[0] == once


def test_the_word_city_after_a_demonstrative_is_no_city_name():
    """这个城市中山路5号 was scrubbed whole ([地址] over 这个城市, read as a city called 这个城): 城市 after
    这个/那座/的 is the word "city", so the address is the road and number; 寄给 stays out of the span. Cities whose
    name ends in 城 (聊城市, 海城市) keep their city."""
    for text, addr in [
        ("这个城市中山路5号新开了一家店", "中山路5号"),
        ("我住在这个城市中山路5号", "中山路5号"),
        ("去年到这个城市人民路12号", "人民路12号"),
        ("那座城市的中山路5号", "中山路5号"),
        ("到了这个城市后住在中山路5号", "中山路5号"),  # the words between 城市 and the road stay out too
        ("这个城市新开的中山路5号", "中山路5号"),
        ("这座城市解放路18号有家老字号", "解放路18号"),  # 解放 is a verb, and the road's name
        ("寄给南京市中山路5号", "南京市中山路5号"),
        ("寄到聊城市中山路5号", "聊城市中山路5号"),  # control: 聊城 is a city
        ("在海城市人民路3号", "海城市人民路3号"),
    ]:
        assert _found(text, ["address"]) == [("address", addr)], text


def test_dictionary_words_jieba_tags_as_names_are_no_names():
    """请陈述你的理由 and 他张口就说 were scrubbed as names (陈述, 张口: jieba's dictionary tags them nr), and so was
    他很高明. Such words are names only with a cue after or a label before; real names keep being found. 孙悟空 is
    still masked on purpose: telling fiction from a real person's name would be a guess, and an extra mask costs
    less than a leaked name."""
    for clear in ("请陈述你的理由", "陈述事实比情绪更重要", "他张口就说自己没错", "阳光明媚", "他很高明", "张开嘴巴"):
        assert _found(clear, ["name"]) == [], clear
    for text, name in [
        ("我叫张伟，电话13812345678", "张伟"),
        ("我叫王小明，今年十岁", "王小明"),
        ("联系人欧阳娜娜，手机13987654321", "欧阳娜娜"),
        ("请把文件交给李娜", "李娜"),
        ("联系人：陈述", "陈述"),  # a label says it is a name
        ("张口老师明天请假", "张口"),  # so does a cue after it
        ("我叫高明", "高明"),
        ("孙悟空大闹天宫", "孙悟空"),
    ]:
        assert _found(text, ["name"]) == [("name", name)], text
    for name in ("许可馨", "安静怡", "周旋豪"):  # 许可|馨: a listed word, then a given-name character
        assert _found(f"今天和{name}一起吃饭", ["name"]) == [("name", name)], name


def test_a_phone_shaped_batch_number_after_its_label_is_no_mobile():
    """批次号 13912345678 was scrubbed as [手机号]: a label naming a product code right before the number (批次号, 批号,
    型号, SN…) says what it is. A phone after its own cue stays a phone, and so does a number after 订单号 (shops key
    orders by the buyer's phone) or one the batch label does not touch."""
    for clear in ("批次号 13912345678 的货已发出", "批次号：13912345678", "产品批号13712345678入库", "SN: 13912345678"):
        assert _found(clear) == [], clear
    assert _found("批次号 20240506，联系电话 13812345678") == [("mobile", "13812345678")]
    assert _found("批号查询请拨打13912345678") == [("mobile", "13912345678")]  # the label names no number here
    assert _found("订单号 13912345678") == [("mobile", "13912345678")]
    assert _found("pilot 13912345678") == [("mobile", "13912345678")]  # 'lot' inside a word is no label


def test_a_building_and_room_without_a_road_is_an_address():
    """住在阳光花园3栋502, 万科城12-3-401, 金地中心A座1205 left the room numbers in clear: only an address with a road
    and number was read. A block followed by a room (3栋502, A座1205, 8号楼1101), or block-unit-room with dashes after
    an estate suffix, is an address with the estate name before it; a block without a room, a dashed code after no
    estate, and a product code are not."""
    for text, addr in [
        ("住在阳光花园3栋502", "阳光花园3栋502"),
        ("地址：万科城12-3-401", "万科城12-3-401"),
        ("公司在金地中心A座1205", "金地中心A座1205"),
        ("碧桂园凤凰城5栋1单元802室", "碧桂园凤凰城5栋1单元802室"),
        ("快递放翠湖天地2期8号楼1101门口", "翠湖天地2期8号楼1101"),
        ("金地中心A座1205-1207", "金地中心A座1205-1207"),  # a range of rooms; jieba cuts 金|地 at the start
        ("他在华润置地广场C座806上班", "华润置地广场C座806"),  # jieba reads 置 as a verb inside the name
        ("包裹存放翠湖天地2期8号楼1101", "翠湖天地2期8号楼1101"),
        ("北京市朝阳区建国路88号阳光花园3栋502", "北京市朝阳区建国路88号阳光花园3栋502"),  # one span, as before
    ]:
        assert _found(text, ["address"]) == [("address", addr)], text
    for clear in ("这3栋楼很高", "第3栋有502人", "订单12-3-401", "型号A座1205", "2024-05-06"):
        assert _found(clear, ["address"]) == [], clear
    assert pii.scrub("住在阳光花园3栋502")[0] == "住在[地址]"


def test_qq_numbers_listed_with_spaces_or_after_a_mobile_are_each_found():
    """QQ 12345 67890 (a space between the numbers), QQ 12345 or 67890, and a list going on after a mobile
    (QQ 12345、67890、13800138000、24680) left the later numbers in clear: the list stopped there."""
    assert _found("QQ 12345 67890") == [("qq", "12345"), ("qq", "67890")]
    assert _found("QQ 12345 or 67890") == [("qq", "12345"), ("qq", "67890")]
    assert _found("QQ 12345、67890、13800138000、24680") == [
        ("qq", "12345"), ("qq", "67890"), ("mobile", "13800138000"), ("qq", "24680")
    ]  # fmt: skip
    assert _found("QQ 12345 2024年加的") == [("qq", "12345")]  # control: a year is no QQ number
    assert _found("我的扣扣是98765432，或者12345678") == [("qq", "98765432"), ("qq", "12345678")]  # a mark and a word
    assert _found("QQ号 12345678 电话 13800138000") == [("qq", "12345678"), ("mobile", "13800138000")]


def test_qq_and_wechat_after_short_and_slang_cues():
    """售后请加Q号50668902, 私聊Q：75530, 加V：Wang_chen2005, +V chen-tom, 绿泡泡yangtom left the account in clear (the
    held-out rows added for QQ/WeChat measured recall 0.775 / 0.700 on them). A bare Q or V is a cue before 号 or a
    colon or after 加/+; a Q or V inside a word (FAQ, Q3, TV, CV, Vlog) is none."""
    for text, typ, value in [
        ("售后请加Q号50668902", "qq", "50668902"),
        ("二手转让，私聊Q：75530", "qq", "75530"),
        ("加Q 123456", "qq", "123456"),
        ("有意者加V：Wang_chen2005", "wechat", "Wang_chen2005"),
        ("+V chen-tom 咨询", "wechat", "chen-tom"),
        ("绿泡泡yangtom，私聊", "wechat", "yangtom"),
        ("V：liuyang62", "wechat", "liuyang62"),
    ]:
        assert _found(text) == [(typ, value)], text
    for clear in ("Q3 12345", "FAQ：12345", "IQ 12345", "Q: 2024年", "TV：samsung", "CV：zhangsan", "Vlog：vlog2024"):
        assert _found(clear, ["qq", "wechat"]) == [], clear


def test_a_road_after_this_city_without_a_demonstrative_is_an_address():
    """本市中山路5号 and 城市中山路5号 (no 这个 before the city word) found no address, and 他说本市朝阳区中山路5号 took
    说本市 as a city called 说本: 本市/我市/该市/此市/全市, and 城市 at the start or after a preposition or pronoun, are
    the word "city"; the address is the district, road and number after it. A city whose name ends in 城 keeps it."""
    for text, addr in [
        ("本市中山路5号新开了一家面馆", "中山路5号"),
        ("城市中山路5号是老地址", "中山路5号"),
        ("我市人民路12号", "人民路12号"),
        ("该市解放大道1024号附近堵车", "解放大道1024号"),
        ("他说本市朝阳区中山路5号", "朝阳区中山路5号"),
        ("寄到本市朝阳区中山路5号", "朝阳区中山路5号"),
        ("我在城市中山路5号", "中山路5号"),
        ("我们城市的中山路5号", "中山路5号"),
        ("聊城市中山路5号", "聊城市中山路5号"),  # control: 聊城 is a city
    ]:
        assert _found(text, ["address"]) == [("address", addr)], text
    for clear in ("本市今年GDP增长5%", "本市有12个区", "城市里3号线", "本市地铁2号线", "城市道路12号令", "全市一盘棋"):
        assert _found(clear, ["address"]) == [], clear


def test_a_block_without_a_room_after_an_estate_name_is_an_address():
    """住在阳光花园3栋 and 万科城12栋 (a block, no room) were left in clear: a block right after an estate's name is an
    address. A block counted (这3栋楼, 他买了3栋房子), an estate suffix alone before it (我们小区3栋楼) or a Chinese
    numeral before 座 (花园一座假山) is not."""
    for text, addr in [
        ("住在阳光花园3栋，离地铁站很近", "阳光花园3栋"),
        ("我家在万科城12栋。", "万科城12栋"),
        ("他住碧水蓝天小区7栋，门口有超市", "碧水蓝天小区7栋"),
        ("碧桂园凤凰城5栋1单元", "碧桂园凤凰城5栋1单元"),
        ("公司在金地中心A座", "金地中心A座"),
        ("住在阳光花园三号楼", "阳光花园三号楼"),
        ("住在阳光花园3栋502", "阳光花园3栋502"),  # with its room, as before
    ]:
        assert _found(text, ["address"]) == [("address", addr)], text
    clear_ones = ("我们小区有3栋楼", "我们小区3栋楼都是新的", "他买了3栋房子", "这3栋楼很高", "花园一座假山", "花园3栋")
    for clear in clear_ones:
        assert _found(clear, ["address"]) == [], clear
    assert pii.scrub("住在阳光花园3栋，离地铁站很近")[0] == "住在[地址]，离地铁站很近"


def test_a_question_label_q_colon_is_no_qq_cue():
    """Q：12345是什么意思 was scrubbed to Q：[QQ号]是什么意思: a Q： opening a line or sentence and followed by a
    question labels the question (an FAQ's Q/A), not a QQ number. After other words (私聊Q：75530), or alone on its
    line in a contact card, it still names one, and QQ：/Q号 always do."""
    for clear in (
        "Q：12345是什么意思",
        "Q: 10086能打通吗",
        "常见问题。Q：12345热线几点上班？A：全天。",
        "Q：95588，这是哪家银行？\nA：工商银行",
    ):
        assert _found(clear, ["qq"]) == [], clear
    for text, value in [
        ("二手转让，私聊Q：75530", "75530"),
        ("Q：75530", "75530"),
        ("Q：75530，私聊", "75530"),
        ("电话：13812345678\nQ：12345678\n微信：abc_123", "12345678"),
        ("QQ：12345是我的", "12345"),
        ("Q号12345是我的", "12345"),
    ]:
        assert _found(text, ["qq"]) == [("qq", value)], text
    assert pii.scrub("Q：12345是什么意思")[0] == "Q：12345是什么意思"


NO_JIEBA_ADDRESSES = [
    ("快递放翠湖天地2期8号楼1101门口", "翠湖天地2期8号楼1101"),
    ("包裹存放翠湖天地2期8号楼1101", "翠湖天地2期8号楼1101"),
    ("东西就放阳光花园3栋", "阳光花园3栋"),
    ("他刚搬进阳光花园3栋502", "阳光花园3栋502"),
    ("到了这个城市后住在中山路5号", "中山路5号"),
    ("这个城市新开的中山路5号", "中山路5号"),
    ("他在华润置地广场C座806上班", "华润置地广场C座806"),  # controls: names holding verbs stay whole
    ("寄到来福士广场A座1205", "来福士广场A座1205"),
    ("我现在住回龙观3号楼502", "回龙观3号楼502"),
]


def test_estate_and_road_names_are_bounded_by_words_without_jieba(monkeypatch):
    """Without jieba the estate name was the 8 characters before the block up to a character of a fixed list, so
    快递放翠湖天地… masked 快递放 and 这个城市新开的中山路5号 masked 新开的: the name now starts after the last of a
    list of lead words (放, 存放, 住在, 的, 搬进…), verbs that sit inside names (来福士, 回龙观) left out. jieba gives
    the same spans."""
    for text, addr in NO_JIEBA_ADDRESSES:
        assert _found(text, ["address"]) == [("address", addr)], text
    monkeypatch.setattr(pii_match, "_JIEBA", [False])
    for text, addr in NO_JIEBA_ADDRESSES:
        assert _found(text, ["address"]) == [("address", addr)], text


def test_an_estate_name_opening_with_a_preposition_is_whole_with_jieba():
    """住在向阳小区3栋502 masked 阳小区3栋502 and left 向 in clear (和平花园 likewise): the walk back stopped at any
    向/和 before jieba could read the word. With jieba the name is cut where jieba finds a lead word only."""
    if not pii._jieba_ok():
        pytest.skip(pii.NAMES_NEED_JIEBA)
    for text, addr in [
        ("住在向阳小区3栋502", "向阳小区3栋502"),
        ("住在和平花园3栋502", "和平花园3栋502"),
        ("会议室在3号楼502", "3号楼502"),  # 在 right before the block still ends the words before it
    ]:
        assert _found(text, ["address"]) == [("address", addr)], text


def test_eval_counts_label_characters_left_in_clear(monkeypatch):
    """pii eval counted any overlap between a found and a labelled address as a hit: an address masked in part
    (北京市朝阳区 of 北京市朝阳区建国路88号3号楼) read label recall 1.000 with 建国路88号3号楼 left readable. It now
    counts the labelled characters no prediction of any type covers, per type, next to span precision and label
    recall."""
    text = "住址：北京市朝阳区建国路88号3号楼，电话13812345678"
    labels = [[3, 18, "address"], [21, 32, "mobile"]]
    preds = [pii.Match("address", 3, 9, text[3:9], 0.85), pii.Match("landline", 21, 32, text[21:32], 0.9)]
    monkeypatch.setattr(pii_eval.pii, "scan", lambda text, types=None, min_confidence=0.0: preds)
    res = pii_eval.score([{"text": text, "spans": labels}])
    address, mobile = res["address"], res["mobile"]
    assert (address.label_recall, address.chars_labelled, address.chars_left_in_clear) == (1.0, 15, 9)
    assert address.share_left_in_clear == 0.6
    # a mobile read as a landline is a missed label but no character of it is left readable
    assert (mobile.label_recall, mobile.chars_labelled, mobile.chars_left_in_clear) == (0.0, 11, 0)
    assert (address.chars_masked_outside_labels, res["landline"].chars_masked_outside_labels) == (0, 0)
    preds[0] = pii.Match("address", 0, 9, text[0:9], 0.85)  # 住址：北京市朝阳区: the label and its 3 characters before
    assert pii_eval.score([{"text": text, "spans": labels}])["address"].chars_masked_outside_labels == 3
    assert pii_eval.misses([{"text": text, "spans": labels}]) == [
        f"missed mobile '13812345678' in {text!r}",
        f"partly address '北京市朝阳区建国路88号3号楼' left '******建国路88号3号楼' in {text!r}",
        f"extra  landline '13812345678' in {text!r}",
    ]


def test_a_road_and_number_after_an_address_cue_needs_no_city():
    """地址：解放路8号, 住在中山路5号, 寄到文三路478号 were left in clear (a road and number was read only after a
    province or city): after 地址/住址/住在/家住/位于/寄到… the road and number are the address. A bare 在 reads only a
    road proper (他在公司里5号开会 stays clear: see the next test), and a road noun is none (地址：道路12号)."""
    for text, addr in [
        ("住在中山路5号", "中山路5号"),
        ("我家住人民路12号3单元", "人民路12号3单元"),
        ("地址：解放路8号", "解放路8号"),
        ("寄到了文三路478号", "文三路478号"),
        ("公司位于中关村大街27号3层", "中关村大街27号3层"),
        ("住址：本市中山路5号", "中山路5号"),
        ("住在北京市朝阳区建国路88号", "北京市朝阳区建国路88号"),  # with its city, as before
    ]:
        assert _found(text, ["address"]) == [("address", addr)], text
    for clear in ("他在公司里5号开会", "地址：道路12号", "地址不详，大约在中山路附近", "住在这里5年了"):
        assert _found(clear, ["address"]) == [], clear


def test_review_misses_tianjie_estate_bare_zai_road_and_wangfujing():
    """Three review misses: 龙湖时代天街3栋 was left in clear (天街, a mall-and-estate suffix, was
    no estate); 我在中山路5号等你 too (a bare 在 was no cue at all); 王府井书记 was masked as a name
    (a surname-led place before a title). A bare 在 now reads a road proper (路/街/大道/巷/胡同)
    named by two or more Chinese characters and its number; 里, 道, a bus route and a road noun stay clear."""
    for text, addr in [
        ("我住在龙湖时代天街3栋", "龙湖时代天街3栋"),
        ("我在中山路5号等你", "中山路5号"),
        ("我在人民大道100号楼下", "人民大道100号"),
        ("现在中山路5号堵车", "中山路5号"),
    ]:
        assert _found(text, ["address"]) == [("address", addr)], text
    for clear in ("他在公司里5号开会", "在通道3号口集合", "他在5路3号车上", "走在高速公路5号出口", "我在北京路上5号线"):
        assert _found(clear, ["address"]) == [], clear
    if pii._jieba_ok():
        assert _found("王府井书记来视察了", ["name"]) == []
        assert _found("张伟书记来视察了", ["name"]) == [("name", "张伟")]  # control: a person before the title


def test_a_surname_led_word_before_a_title_is_a_name_and_a_school_is_none():
    """请联系钟南山院士 left 钟南山 in clear (jieba tags it a place, "ns"), and 武当派 in 张三丰是武当派创始人 was
    masked as a name (jieba tags it "nr"): a noun led by a surname right before a title word (院士, 老师, 先生…) is a
    name, and a word ending in 派 is a school. A title inside a longer word (高级|工程师) makes no name."""
    if not pii._jieba_ok():
        pytest.skip(pii.NAMES_NEED_JIEBA)
    for text, name in [("请联系钟南山院士", "钟南山"), ("钟南山院士说", "钟南山"), ("张三丰是武当派创始人", "张三丰")]:
        assert _found(text, ["name"]) == [("name", name)], text
    for clear in ("少林派和武当派", "高级工程师来了", "北京老师很多", "上海先生"):
        assert _found(clear, ["name"]) == [], clear


def test_a_city_is_not_read_from_the_words_before_it_nor_cut_at_a_road_named_after_a_province():
    """快去大连市中山区人民路9号 was masked from 快 (four characters at the start read as a city, 快去大连), and
    广州市北京路8号 from 北京 (a province inside a road's name cut the address, leaving 广州市 in clear): a city at the
    start or after a mark is two or three characters unless a listed longer one, and only a province before the
    city's 市 starts the address. With jieba a word before an estate is read whole (寄件请到|幸福小区5栋)."""
    for text, addr in [
        ("快去大连市中山区人民路9号", "大连市中山区人民路9号"),
        ("请寄长春市南关区人民大街88号", "长春市南关区人民大街88号"),
        ("收件：请到长春市南关区人民大街88号", "长春市南关区人民大街88号"),
        ("广州市北京路8号", "广州市北京路8号"),
        ("和田市北京路2号", "和田市北京路2号"),
        ("乌鲁木齐市天山区解放南路5号", "乌鲁木齐市天山区解放南路5号"),  # controls: longer cities stay whole
        ("乌兰浩特市兴安南大街3号", "乌兰浩特市兴安南大街3号"),
        ("库尔勒市人民路5号", "库尔勒市人民路5号"),
        ("住在北京市朝阳区建国路88号", "北京市朝阳区建国路88号"),
        ("石家庄市长安区中山东路1号", "石家庄市长安区中山东路1号"),
    ]:
        assert _found(text, ["address"]) == [("address", addr)], text
    if pii._jieba_ok():
        assert _found("寄件请到幸福小区5栋门卫室", ["address"]) == [("address", "幸福小区5栋")]
